//! Where the status API is served: `[api] listen` in the agent's config
//! and `--api` of the debug CLI. It lives with the API rather than with the
//! daemon's HTTP server so that the config, which names it, need not import
//! the daemon.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

use serde::Deserialize;

/// A TCP address or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("unix: needs a path")]
    NoPath,
    // The address error is part of the message, not a `source`: printing
    // an error chain would otherwise show it twice.
    #[error("`{text}`: {reason}")]
    Addr {
        text: String,
        reason: std::net::AddrParseError,
    },
}

impl FromStr for Listen {
    type Err = ListenError;
    /// `127.0.0.1:9464`, `[::1]:9464` or `unix:/run/vmbw/api.sock`.
    fn from_str(s: &str) -> Result<Listen, ListenError> {
        match s.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Listen::Unix(PathBuf::from(path))),
            Some(_) => Err(ListenError::NoPath),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|reason| ListenError::Addr {
                    text: s.to_owned(),
                    reason,
                }),
        }
    }
}

impl TryFrom<String> for Listen {
    type Error = ListenError;
    fn try_from(s: String) -> Result<Listen, ListenError> {
        s.parse()
    }
}

/// The form it is written in, so that it parses back to itself.
impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:9464".parse::<Listen>(),
            Ok(Listen::Tcp("127.0.0.1:9464".parse().expect("addr")))
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<Listen>(),
            Ok(Listen::Unix("/run/x.sock".into()))
        );
        assert!("unix:".parse::<Listen>().is_err());
        assert!("localhost".parse::<Listen>().is_err());
    }

    #[test]
    fn listen_addresses_print_as_written() {
        for s in ["127.0.0.1:9464", "[::1]:9464", "unix:/run/vmbw/api.sock"] {
            let l: Listen = s.parse().expect("parses");
            assert_eq!(l.to_string(), s);
        }
    }
}
