//! CPU backend (reference implementation).
