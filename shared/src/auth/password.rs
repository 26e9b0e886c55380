//! Salted slow password hashes for the builtin account backend.
