//! The demo page embedded in the binary (`crates/cli/web/`, see build.rs).

include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// A web root with the demo page's files.
pub fn demo_root() -> std::sync::Arc<circuit_net::web::WebRoot> {
    let root = circuit_net::web::WebRoot::new();
    for (name, bytes) in WEB_FILES {
        root.set(&format!("/{name}"), bytes.to_vec());
    }
    std::sync::Arc::new(root)
}
