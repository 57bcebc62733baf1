//! `bsm:plugin/reports`: not available in this host yet; every call answers
//! `unavailable` until atomic report storage lands.

use crate::bindings::reports::{Error, Host, ReportRef};

use super::Caller;

const NOT_YET: &str = "the reports capability is not available in this host yet";

/// Per-run state: who is writing.
pub struct ReportsState {
    _caller: Caller,
}

impl ReportsState {
    pub fn new(caller: Caller) -> Self {
        Self { _caller: caller }
    }
}

impl Host for ReportsState {
    async fn write(&mut self, _name: String, _markdown: String) -> Result<ReportRef, Error> {
        Err(Error::Unavailable(NOT_YET.into()))
    }
}
