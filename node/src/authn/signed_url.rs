//! Pre-signed URLs (`OC-Signature`, spec §4.3): the I/O around `gatehouse_shared::auth::signed_url`.
