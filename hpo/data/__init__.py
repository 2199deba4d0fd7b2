"""Reading data (IDX, tables, sklearn sets), splitting it, and the fitted preprocessing."""
