//! The debug server. Placeholder until the next commit.
