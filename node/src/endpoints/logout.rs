//! Back-channel logout (spec §7.3).
