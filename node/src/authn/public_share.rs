//! Public-share tokens (spec §4.4), validated by the share service of docs/public-shares.md.
