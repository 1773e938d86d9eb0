//! No Docker engine runs here, so compose/ cannot be started in CI. This checks what can be
//! checked without one: the YAML parses, it has the two services, and every file it or its
//! Dockerfiles reference exists.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("compose/compose.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

#[test]
fn compose_has_db_and_audit_tail_sharing_the_export_volume() {
    let doc = compose();
    let services = &doc["services"];
    for name in ["db", "audit-tail"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
    }
    let volumes = |service: &str| -> Vec<String> {
        services[service]["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().split(':').next().unwrap().to_string())
            .collect()
    };
    assert!(volumes("db").contains(&"exports".to_string()));
    assert!(volumes("audit-tail").contains(&"exports".to_string()));
    assert!(volumes("audit-tail").contains(&"stream".to_string()));
    for v in volumes("db").iter().chain(&volumes("audit-tail")) {
        assert!(
            !doc["volumes"][v.as_str()].is_badvalue(),
            "volume {v} is not declared"
        );
    }
    let command: Vec<&str> = services["db"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(command.contains(&"wal_level=logical"));
    assert!(command.contains(&"shared_preload_libraries=pg_cron"));
}

#[test]
fn every_file_referenced_exists() {
    let doc = compose();
    let compose_dir = repo().join("compose");
    for (name, service) in doc["services"].as_hash().unwrap() {
        let name = name.as_str().unwrap();
        let build = &service["build"];
        let context = compose_dir.join(build["context"].as_str().unwrap());
        let dockerfile = context.join(build["dockerfile"].as_str().unwrap());
        assert!(dockerfile.is_file(), "{name}: {dockerfile:?} missing");
        for source in copy_sources(&dockerfile) {
            assert!(
                context.join(&source).exists(),
                "{name}: COPY source {source} missing"
            );
        }
    }
    let init = compose_dir.join("initdb.sh");
    use std::os::unix::fs::PermissionsExt;
    assert!(
        std::fs::metadata(&init).unwrap().permissions().mode() & 0o111 != 0,
        "initdb.sh must be executable"
    );
}

/// The local sources of every COPY line (not `COPY --from=...`).
fn copy_sources(dockerfile: &Path) -> Vec<String> {
    std::fs::read_to_string(dockerfile)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|rest| !rest.starts_with("--from"))
        .flat_map(|rest| {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            parts[..parts.len() - 1]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}
