//! `jwt`: placeholder until the verifier lands (being written now).

use super::{Phase, Plugin};
use nio_proto::model::JwtAuth;

#[derive(Debug)]
pub struct JwtPlugin;

impl JwtPlugin {
    pub fn new(_c: JwtAuth) -> Result<JwtPlugin, String> {
        Err("jwt: not available yet".into())
    }
}

impl Plugin for JwtPlugin {
    fn phase(&self) -> Phase {
        Phase::Access
    }
}
