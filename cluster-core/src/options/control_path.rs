//! Where a master's control socket lives: the `control_path` and `name` options, and the rule
//! that both the master and `clusterctl` apply to find it.
//!
//! The default directory is the user's runtime directory (`$XDG_RUNTIME_DIR/cluster`) when
//! there is one, `/run/cluster` for root, and `<tmp>/cluster-<uid>` otherwise: per user, so
//! that two users' clusters of the same name never meet, and in a directory the user owns
//! (mode 0700), so that nobody else can even reach the socket.

use std::path::{Path, PathBuf};

use super::{OptionValue, ParseError};

/// The `control_path` option: where the master serves its control socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ControlPath {
    /// `<default directory>/<name>.sock` (see the module documentation).
    #[default]
    Auto,
    /// No control socket.
    Off,
    /// This socket path.
    At(PathBuf),
}

impl ControlPath {
    /// The socket path for a cluster named `name`, or `None` when the socket is off.
    #[must_use]
    pub fn resolve(&self, name: &str) -> Option<PathBuf> {
        match self {
            ControlPath::Auto => Some(socket_in(&default_dir(), name)),
            ControlPath::Off => None,
            ControlPath::At(path) => Some(path.clone()),
        }
    }
}

/// `None` turns the socket off, as the issue's `control_path = None` says.
impl From<Option<PathBuf>> for ControlPath {
    fn from(path: Option<PathBuf>) -> Self {
        path.map_or(ControlPath::Off, ControlPath::At)
    }
}

impl From<PathBuf> for ControlPath {
    fn from(path: PathBuf) -> Self {
        ControlPath::At(path)
    }
}

impl From<&str> for ControlPath {
    fn from(path: &str) -> Self {
        ControlPath::At(PathBuf::from(path))
    }
}

impl OptionValue for ControlPath {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        match text.trim() {
            "auto" => Ok(ControlPath::Auto),
            "off" => Ok(ControlPath::Off),
            "" => Err(ParseError::from(
                "an empty path; expected `auto`, `off` or a socket path".to_owned(),
            )),
            path => Ok(ControlPath::At(PathBuf::from(path))),
        }
    }
    fn to_text(&self) -> String {
        match self {
            ControlPath::Auto => "auto".to_owned(),
            ControlPath::Off => "off".to_owned(),
            ControlPath::At(path) => path.display().to_string(),
        }
    }
    fn to_rust(&self) -> String {
        match self {
            ControlPath::Auto => "$crate::options::ControlPath::Auto".to_owned(),
            ControlPath::Off => "$crate::options::ControlPath::Off".to_owned(),
            ControlPath::At(path) => format!(
                "$crate::options::ControlPath::At(::std::path::PathBuf::from({:?}))",
                path.display().to_string()
            ),
        }
    }
}

/// The `name` option: what the cluster is called in its socket's name and in `clusterctl`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterName(Option<String>);

impl ClusterName {
    /// A name given in code.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        ClusterName(Some(name.into()))
    }

    /// The name in force: the one given, else the executable's file name.
    #[must_use]
    pub fn resolve(&self) -> String {
        self.0.clone().unwrap_or_else(default_name)
    }
}

impl From<&str> for ClusterName {
    fn from(name: &str) -> Self {
        ClusterName::new(name)
    }
}

impl From<String> for ClusterName {
    fn from(name: String) -> Self {
        ClusterName::new(name)
    }
}

/// Checks a name for use as a file name: one path component, nothing hidden.
fn check_name(name: &str) -> Result<(), ParseError> {
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\0'])
        || name.chars().any(char::is_whitespace)
        || name.len() > 64;
    if bad {
        Err(ParseError::from(format!(
            "{name:?} cannot name a socket file; expected `auto` or up to 64 characters without `/`, spaces or a leading `.`"
        )))
    } else {
        Ok(())
    }
}

impl OptionValue for ClusterName {
    fn parse_text(text: &str) -> Result<Self, ParseError> {
        match text.trim() {
            "auto" => Ok(ClusterName(None)),
            name => check_name(name).map(|()| ClusterName::new(name)),
        }
    }
    fn to_text(&self) -> String {
        self.0.clone().unwrap_or_else(|| "auto".to_owned())
    }
    fn to_rust(&self) -> String {
        match &self.0 {
            None => "$crate::options::ClusterName::default()".to_owned(),
            Some(name) => format!("$crate::options::ClusterName::new({name:?})"),
        }
    }
}

/// The option's rule, for names set in code (`with_name`).
pub(crate) fn check_cluster_name(name: &ClusterName) -> Result<(), ParseError> {
    name.0.as_deref().map_or(Ok(()), check_name)
}

/// The executable's file name, the default cluster name.
#[must_use]
pub fn default_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        // A replaced executable reads as "name (deleted)" in /proc.
        .map(|n| n.trim_end_matches(" (deleted)").to_owned())
        .filter(|n| check_name(n).is_ok())
        .unwrap_or_else(|| "cluster".to_owned())
}

/// The directory of default sockets for this user (see the module documentation).
#[must_use]
pub fn default_dir() -> PathBuf {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(runtime).join("cluster");
    }
    let uid = nix::unistd::geteuid();
    // /run is writable by root only; anyone else gets a directory of their own in /tmp.
    if uid.is_root() && Path::new("/run").is_dir() {
        return PathBuf::from("/run/cluster");
    }
    std::env::temp_dir().join(format!("cluster-{uid}"))
}

/// The socket of the cluster named `name` in `dir`.
#[must_use]
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}
