"""acquisition stage."""
