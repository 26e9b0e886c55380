//! Placeholder: filled in by the identity work of issue 3.
