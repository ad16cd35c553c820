//! Tokio glue of circuit: transports, the connection upgrade, connections and
//! streams, the [`Node`], built-in protocols and the relay client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use circuit_net::{Node, NodeConfig};
//! let node = Node::builder(libp2p_identity::Keypair::generate_ed25519())
//!     .listen_on("/ip4/127.0.0.1/tcp/0".parse()?)
//!     .build()
//!     .await?;
//! let conn = node.dial(&"/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWRelay".parse()?).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod autorelay;
pub mod connection;
pub mod framed;
pub mod node;
pub mod protocols;
pub mod relay_client;
pub mod tls;
pub mod transport;
pub mod upgrade;
pub mod web;

pub use circuit_proto::yamux::{StreamLimits, WindowBudget};
pub use connection::{Connection, ConnectionInfo, Direction, Stream};
pub use libp2p_identity::{Keypair, PeerId};
pub use multiaddr::Multiaddr;
pub use node::{
    DialError, IncomingStream, Node, NodeBuilder, NodeConfig, NodeEvent, PeerInfo, WeakNode,
};
