//! `bsm:plugin/cache`: not available in this host yet. The WIT shape is
//! settled; until the cache lands every call answers `unavailable`, which a
//! plugin can handle like a cache miss.

use crate::bindings::cache::{Error, Host};

use super::Caller;

const NOT_YET: &str = "the cache capability is not available in this host yet";

/// Per-run state: whose namespace the calls would use.
pub struct CacheState {
    _caller: Caller,
}

impl CacheState {
    pub fn new(caller: Caller) -> Self {
        Self { _caller: caller }
    }
}

impl Host for CacheState {
    async fn get(&mut self, _key: String) -> Result<Option<Vec<u8>>, Error> {
        Err(Error::Unavailable(NOT_YET.into()))
    }

    async fn set(
        &mut self,
        _key: String,
        _value: Vec<u8>,
        _ttl_ms: Option<u64>,
    ) -> Result<(), Error> {
        Err(Error::Unavailable(NOT_YET.into()))
    }

    async fn delete(&mut self, _key: String) -> Result<(), Error> {
        Err(Error::Unavailable(NOT_YET.into()))
    }
}
