//! Placeholder: the reva-format x-access-token (issue 3).
