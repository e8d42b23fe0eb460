"""The work of stage 1, one module per verb; commands only parse options and call these."""
