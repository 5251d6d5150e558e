use super::*;

fn error<T: FromStr<Err = ParseError> + fmt::Debug>(text: &str) -> ParseError {
    match text.parse::<T>() {
        Ok(value) => panic!("{text:?} read as {value:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_values_say_what_is_accepted() {
    assert!(
        error::<Account>("no body")
            .to_string()
            .contains("numeric id")
    );
    assert!(
        error::<Account>("99999999999")
            .to_string()
            .contains("too large")
    );
    assert!(error::<Umask>("0888").to_string().contains("octal"));
    assert!(error::<Umask>("01777").to_string().contains("at most 0777"));
    assert!(error::<Nice>("20").to_string().contains("-20 to 19"));
    let e = error::<Rlimits>("nofile=10, stack=1");
    assert_eq!(e.item(), Some(1));
    assert!(e.to_string().contains("nofile, nproc, core and as"), "{e}");
    assert!(
        error::<Rlimits>("nofile=10:5")
            .to_string()
            .contains("above the hard")
    );
    assert!(
        error::<Rlimits>("core=1, core=2")
            .to_string()
            .contains("twice")
    );
    assert!(
        error::<Rlimits>("nproc=lots")
            .to_string()
            .contains("rlimit nproc")
    );
    assert!(
        error::<CpuAffinity>("3-1")
            .to_string()
            .contains("backwards")
    );
    assert!(
        error::<CpuAffinity>("1024")
            .to_string()
            .contains("0 to 1023")
    );
    let e = error::<EnvAllow>("PATH, BAD-NAME");
    assert_eq!(e.item(), Some(1));
}

#[test]
fn unlimited_and_soft_below_hard_read_back() {
    let limits: Result<Rlimits, _> = "as=unlimited, nofile=1024:unlimited".parse();
    let limits = limits.unwrap_or_default();
    assert_eq!(
        limits.get(Limit::As).map(|l| (l.soft, l.hard)),
        Some((None, None))
    );
    assert_eq!(
        limits.get(Limit::Nofile).map(|l| (l.soft, l.hard)),
        Some((Some(1024), None))
    );
    assert_eq!(limits.to_string(), "nofile=1024:unlimited, as=unlimited");
    assert!("off".parse::<Rlimits>().is_ok_and(|l| l.is_empty()));
}

#[test]
fn a_groups_limits_replace_the_clusters_one_by_one() {
    let cluster: Rlimits = "nofile=100, core=0".parse().unwrap_or_default();
    let group: Rlimits = "nofile=200".parse().unwrap_or_default();
    assert_eq!(cluster.overlaid(&group).to_string(), "nofile=200, core=0B");
}

#[test]
fn env_allow_matches_names_and_prefixes_only() {
    let allow: EnvAllow = "PATH, LC_*".parse().unwrap_or_default();
    assert!(allow.allows("PATH") && allow.allows("LC_TIME"));
    assert!(!allow.allows("PATH2") && !allow.allows("XLC_TIME"));
    let joined = allow.joined(&"JOBS_*, PATH".parse().unwrap_or_default());
    assert_eq!(joined.to_string(), "PATH, LC_*, JOBS_*");
    assert!("".parse::<EnvAllow>().is_ok_and(|a| a.names().is_empty()));
}
