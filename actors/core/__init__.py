"""Pure cores of the actors: plain classes with no threads, clock, I/O or logging."""
