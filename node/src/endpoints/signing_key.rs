//! The signing-key endpoint of the oCIS `ocs` service (spec §4.3).
