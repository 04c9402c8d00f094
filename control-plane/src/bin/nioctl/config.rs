//! Contexts: `$NIOCONFIG`, or `~/.config/nio/config.yaml`.
//!
//! ```yaml
//! currentContext: prod
//! contexts:
//!   prod: {server: https://nio-admin.example.com, tokenFile: ~/.nio/prod-token}
//! ```

use super::ConfigCommand;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NioContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, NioContext>,
}

pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NIOCONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("nio").join("config.yaml"))
}

impl ConfigFile {
    /// The config file, or an empty one when there is none.
    pub fn load() -> Result<ConfigFile> {
        let Some(path) = path() else {
            return Ok(ConfigFile::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Ok(ConfigFile::default()),
            Ok(text) => serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not a valid nioctl config file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self) -> Result<PathBuf> {
        let path = path().context("no config file location: set NIOCONFIG or HOME")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, serde_yaml::to_string(self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The named context, else the current one, else none.
    pub fn context(&self, name: Option<&str>) -> Result<Option<&NioContext>> {
        match name.or(self.current_context.as_deref()) {
            None => Ok(None),
            Some(n) => match self.contexts.get(n) {
                Some(c) => Ok(Some(c)),
                None if name.is_some() => bail!(
                    "no context \"{n}\" in {}; create it with `nioctl config set-context {n} --server URL --token-file FILE`",
                    path().map(|p| p.display().to_string()).unwrap_or_default()
                ),
                // A current context that was removed: fall back to defaults.
                None => Ok(None),
            },
        }
    }
}

pub fn run(
    c: &ConfigCommand,
    server: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> Result<()> {
    let mut file = ConfigFile::load()?;
    match c {
        ConfigCommand::UseContext { name } => {
            if !file.contexts.contains_key(name) {
                bail!("no context \"{name}\"; create it with `nioctl config set-context {name} --server URL --token-file FILE`");
            }
            file.current_context = Some(name.clone());
            file.save()?;
            println!("switched to context \"{name}\"");
        }
        ConfigCommand::SetContext { name } => {
            let ctx = file.contexts.entry(name.clone()).or_default();
            if let Some(s) = server {
                ctx.server = Some(s.to_string());
            }
            if let Some(t) = token_file {
                let t = std::path::absolute(t).unwrap_or_else(|_| t.to_path_buf());
                ctx.token_file = Some(t);
            }
            if file.current_context.is_none() {
                file.current_context = Some(name.clone());
            }
            let path = file.save()?;
            println!("context \"{name}\" saved in {}", path.display());
        }
        ConfigCommand::GetContexts => {
            let rows: Vec<Vec<String>> = file
                .contexts
                .iter()
                .map(|(n, c)| {
                    vec![
                        if file.current_context.as_deref() == Some(n) {
                            "*"
                        } else {
                            ""
                        }
                        .into(),
                        n.clone(),
                        c.server.clone().unwrap_or_else(|| "-".into()),
                        c.token_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            super::print_rows(&["CURRENT", "NAME", "SERVER", "TOKEN FILE"], &rows);
        }
        ConfigCommand::CurrentContext => match &file.current_context {
            Some(c) => println!("{c}"),
            None => bail!("no current context; set one with `nioctl config use-context NAME`"),
        },
    }
    Ok(())
}
