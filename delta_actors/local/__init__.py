"""PostgreSQL clusters we run ourselves: the embedded default and throwaway ones."""
