//! STUB
pub struct NearCache;
pub struct NearCacheStats;
