//! md's write-mostly legs: which legs the user named (`--write-mostly LEG`,
//! `--readwrite LEG`) and the default for a leg nobody named: a remote
//! (NBD) leg is write-mostly when a local leg is there to read from.
//! The flag itself lives in the engine's slots (read balancing) and in each
//! leg's own superblock (md's devflags `WriteMostly1`).

use super::error::ArrayError;
use crate::io::leg::{is_remote_name, Locator};
use std::path::{Path, PathBuf};

/// What the user said of some legs' write-mostly flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteMostlyChoice {
    /// `--write-mostly LEG`: read only when no other in-sync leg remains.
    pub write_mostly: Vec<PathBuf>,
    /// `--readwrite LEG`: read as any leg (a remote leg's default undone).
    pub readwrite: Vec<PathBuf>,
}

impl WriteMostlyChoice {
    /// Refuses a named leg that is none of `legs` (a typo would otherwise
    /// be ignored) and a leg named both ways.
    pub fn check(&self, legs: &[PathBuf]) -> Result<(), ArrayError> {
        for (flag, named) in [
            ("--write-mostly", &self.write_mostly),
            ("--readwrite", &self.readwrite),
        ] {
            for n in named {
                if !legs.iter().any(|l| same_leg(l, n)) {
                    return Err(ArrayError::NotAMember {
                        path: n.clone(),
                        why: format!("{flag} names a leg that is not one of the legs given"),
                    });
                }
            }
        }
        if let Some(both) = self
            .write_mostly
            .iter()
            .find(|w| self.readwrite.iter().any(|r| same_leg(w, r)))
        {
            return Err(ArrayError::NotAMember {
                path: both.clone(),
                why: "named by both --write-mostly and --readwrite".into(),
            });
        }
        Ok(())
    }

    /// Some(true) for a leg named by `--write-mostly`, Some(false) by
    /// `--readwrite`, None when not named.
    pub fn said(&self, leg: &Path) -> Option<bool> {
        if self.write_mostly.iter().any(|w| same_leg(w, leg)) {
            Some(true)
        } else if self.readwrite.iter().any(|r| same_leg(r, leg)) {
            Some(false)
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        self.write_mostly.is_empty() && self.readwrite.is_empty()
    }
}

/// The flag of a leg nobody named as it joins the array (create, add): a
/// remote leg is write-mostly while some local leg (`any_local`) is there
/// to read from; a local leg never.
pub fn default_for(leg: &Path, any_local: bool) -> bool {
    is_remote_name(leg) && any_local
}

/// `a` and `b` name the same leg: URIs of the same export on the same
/// server, or paths of the same file (or equal once made absolute, for a
/// path that does not exist).
pub fn same_leg(a: &Path, b: &Path) -> bool {
    match (is_remote_name(a), is_remote_name(b)) {
        (true, true) => match (Locator::parse(a), Locator::parse(b)) {
            (Ok(x), Ok(y)) => x.same_leg(&y),
            _ => a == b,
        },
        (false, false) => {
            use std::os::unix::fs::MetadataExt;
            match (std::fs::metadata(a), std::fs::metadata(b)) {
                (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
                _ => std::path::absolute(a).ok() == std::path::absolute(b).ok(),
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_leg_is_write_mostly_only_beside_a_local_one() {
        let uri = Path::new("nbd://10.0.0.2/leg1");
        assert!(default_for(uri, true));
        assert!(!default_for(uri, false));
        assert!(!default_for(Path::new("/srv/leg0.img"), true));
    }

    #[test]
    fn named_legs_are_matched_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.img");
        std::fs::write(&a, b"").expect("a");
        let legs = vec![a.clone(), PathBuf::from("nbd://h/x")];
        let c = WriteMostlyChoice {
            write_mostly: vec![PathBuf::from("nbd://H:10809/x")],
            readwrite: vec![dir.path().join(".").join("a.img")],
        };
        c.check(&legs).expect("both are legs");
        assert_eq!(c.said(Path::new("nbd://h/x")), Some(true));
        assert_eq!(c.said(&a), Some(false));
        assert_eq!(c.said(Path::new("/elsewhere")), None);
        let typo = WriteMostlyChoice {
            write_mostly: vec![dir.path().join("b.img")],
            ..Default::default()
        };
        let e = typo.check(&legs).expect_err("not a leg");
        assert!(e.to_string().contains("--write-mostly"), "{e}");
        let both = WriteMostlyChoice {
            write_mostly: vec![a.clone()],
            readwrite: vec![a.clone()],
        };
        assert!(both.check(&legs).is_err());
    }
}
