//! The built-in sources and consumers, written on the SDK's `Source` and `Consumer`
//! traits exactly as a user's would be: served by `flowplane-connect`.
//!
//! | kind | name | params |
//! | --- | --- | --- |
//! | source | `generator` | `count` (per partition, 0 unbounded), `partitions` (1), `rate` (records/s per partition, 0 = as credit allows), `payload` (`json` \| `text` \| `binary`), `size` (binary bytes, 64), `poison_every` (0 = never) |
//! | source | `file` | `path` (required), `format` (`jsonl` \| `text` \| `wav` \| `binary`), `chunk_bytes` (65536), `chunk_frames` (960), `follow` (false) |
//! | consumer | `file` | `path` (required; `{output}` is the output name), `format` (`jsonl` \| `raw` \| `wav`), `sync` (false: flush only) |
//! | consumer | `log` | none |

pub mod file_consumer;
pub mod file_source;
pub mod generator;
pub mod log_consumer;
pub mod wav;

pub use file_consumer::FileConsumer;
pub use file_source::FileSource;
pub use generator::Generator;
pub use log_consumer::LogConsumer;

use flowplane_sdk::ConnectorHostBuilder;

/// The built-ins' version: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A connector host builder with every built-in: sources `generator` and `file`,
/// consumers `file` and `log`.
pub fn built_ins() -> ConnectorHostBuilder {
    ConnectorHostBuilder::new("flowplane-connect")
        .version(VERSION)
        .source(Generator)
        .source(FileSource)
        .consumer(FileConsumer::default())
        .consumer(LogConsumer)
}
