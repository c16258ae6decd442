//! The set of known device profiles: the ones shipped inside the binary, optionally overlaid by a
//! profile directory on the gateway (a local fix or a new device model without a new release).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::diagnostic::Diagnostic;
use crate::load::parse_profile;
use crate::profile::Profile;

/// The shipped profiles (`firmware-config/profiles/*.toml`), embedded at build time.
pub const BUILTIN: [(&str, &str); 4] = [
    ("sl-100", include_str!("../profiles/sl-100.toml")),
    ("wl-ultra", include_str!("../profiles/wl-ultra.toml")),
    ("dm-pm", include_str!("../profiles/dm-pm.toml")),
    ("bin-fill", include_str!("../profiles/bin-fill.toml")),
];

/// Known profiles by name.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl ProfileSet {
    /// No profiles.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shipped profiles. They are tested to load; an error here means a broken build.
    pub fn builtin() -> Result<Self, Vec<Diagnostic>> {
        let mut set = Self::new();
        let mut errors = Vec::new();
        for (name, source) in BUILTIN {
            let file = Path::new("firmware-config/profiles").join(format!("{name}.toml"));
            match parse_profile(&file, source) {
                Ok(p) => set.insert(p),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// The profiles in `dir` (every `*.toml`), and nothing else.
    pub fn load_dir(dir: &Path) -> Result<Self, Vec<Diagnostic>> {
        Self::new().with_dir(dir)
    }

    /// These profiles, overlaid by those in `dir`: a file there replaces a profile of the same name.
    pub fn with_dir(mut self, dir: &Path) -> Result<Self, Vec<Diagnostic>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![Diagnostic::file_error(
                dir,
                format!("cannot read profile directory: {e}"),
            )]
        })?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut errors = Vec::new();
        for file in files {
            match crate::load::load_profile(&file) {
                Ok(p) => self.insert(p),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(errors)
        }
    }

    /// Adds `profile`, replacing one of the same name.
    pub fn insert(&mut self, profile: Profile) {
        self.profiles
            .insert(profile.name.clone(), Arc::new(profile));
    }

    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        self.profiles.get(name).cloned()
    }

    /// Profile names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.profiles.values()
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}
