//! tidemark-tsdb: the storage engine behind the tidemark-storage traits. Modules are named after
//! what they own on disk: `chunk` (the Gorilla codec), `chunks` (chunk segment files), `log`
//! (the segmented write-ahead log), `head` (in-memory recent window), `index` (block index),
//! `block`, `compact`, `retention`, and `db` which ties them together.

pub mod chunk;
pub mod chunks;
#[doc(hidden)]
pub mod testdata;
