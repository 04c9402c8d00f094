//! Bearer tokens: the admin token (admin API) and the join token (data
//! planes). Taken from the environment when set, otherwise read from — or
//! created once in — the data dir with mode 0600. Values are never logged;
//! [`Token`]'s `Debug` is redacted and comparison is constant-time.

use rand::RngCore;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Where a token came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Env(&'static str),
    File(PathBuf),
    Created(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Created(p) => write!(f, "new file {}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{var} is set but empty or shorter than 16 characters; use a long random value")]
    WeakEnv { var: &'static str },
    #[error("token file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path} is empty or shorter than 16 characters; delete it to generate a new token")]
    WeakFile { path: PathBuf },
}

impl Token {
    pub fn new(value: impl Into<String>) -> Token {
        Token(value.into())
    }

    /// Constant-time comparison with a presented secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        ours.len() == presented.len() && bool::from(ours.ct_eq(presented))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random token: 32 bytes from the OS RNG, hex-encoded.
    pub fn generate() -> Token {
        let mut bytes = [0u8; 32];
        // ThreadRng is a CSPRNG seeded from the OS.
        rand::rng().fill_bytes(&mut bytes);
        Token(hex::encode(bytes))
    }

    /// The token from `env_value` (the value of `var`) if set, else from
    /// `dir/file_name`, creating that file (0600) with a new token if absent.
    pub fn load_or_create(
        env_value: Option<String>,
        var: &'static str,
        dir: &Path,
        file_name: &str,
    ) -> Result<(Token, Source), TokenError> {
        if let Some(v) = env_value {
            let v = v.trim().to_string();
            if v.len() < 16 {
                return Err(TokenError::WeakEnv { var });
            }
            return Ok((Token(v), Source::Env(var)));
        }
        let path = dir.join(file_name);
        let io = |source| TokenError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim().to_string();
                if s.len() < 16 {
                    return Err(TokenError::WeakFile { path });
                }
                Ok((Token(s), Source::File(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = Token::generate();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(&path).map_err(io)?;
                f.write_all(format!("{}\n", token.0).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io)?;
                Ok((token, Source::Created(path)))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    let h = header?;
    let prefix = b"Bearer ";
    if h.len() > prefix.len() && h[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&h[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_private_mode_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, src) = Token::load_or_create(None, "NIO_X", dir.path(), "t").unwrap();
        assert!(matches!(src, Source::Created(_)));
        let (b, src) = Token::load_or_create(None, "NIO_X", dir.path(), "t").unwrap();
        assert!(matches!(src, Source::File(_)));
        assert!(a.matches(b.expose().as_bytes()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("t"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!a.matches(b"wrong"));
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
        assert!(Token::load_or_create(Some("short".into()), "NIO_X", dir.path(), "t").is_err());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
