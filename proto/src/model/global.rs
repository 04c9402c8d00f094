//! `GlobalConfig`: settings for every route. One resource, named `global`.

use super::{FieldError, PluginSpec};
use serde::{Deserialize, Serialize};

/// The only accepted name.
pub const GLOBAL_NAME: &str = "global";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalConfigSpec {
    /// Plugins run for every routed request, before the route's own (IP
    /// block lists, maintenance mode, CORS…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginSpec>,
}

impl GlobalConfigSpec {
    pub(super) fn validate(&self, name: &str, errors: &mut Vec<FieldError>) {
        if name != GLOBAL_NAME {
            errors.push(FieldError::new(
                "metadata.name",
                format!("there is one GlobalConfig and it is named \"{GLOBAL_NAME}\""),
            ));
        }
        super::plugins::validate_list(&self.plugins, "spec.plugins", errors);
    }
}
