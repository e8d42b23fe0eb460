"""Person re-identification: dataset layouts and what works on them."""
