//! tidemark-tsdb: the storage engine behind the tidemark-storage traits. Modules are named after
//! what they own on disk: `chunk` (the Gorilla codec), `chunks` (chunk segment files), `log`
//! (the segmented write-ahead log), `head` (in-memory recent window), `index` (block index),
//! `block`, `tombstones` (deleted intervals), `compact`, `downsample`, `retention`, and `db`
//! which ties them together.

pub mod analyze;
pub mod block;
pub mod chunk;
pub mod chunks;
pub mod compact;
pub mod db;
pub mod downsample;
pub mod head;
mod head_append;
mod head_log;
mod head_read;
pub mod import;
pub mod index;
pub mod log;
pub mod postings;
pub mod record;
pub mod retention;
#[doc(hidden)]
pub mod testdata;
pub mod tombstones;

pub use db::{Db, DbError, DbOptions, DbStats, OpenReport};
pub use head::{Head, HeadError, HeadOptions, HeadStats};
pub use head_append::HeadAppender;
pub use head_log::ReplayStats;
pub use head_read::HeadQuerier;
