//! `inboxd import chat21`: a chat21 deployment's MongoDB data, exported with `mongoexport`
//! (Extended JSON), read into inboxd's store: groups (so they route), conversation lists, history.
//!
//! Every file is read through once before anything is written: a malformed document refuses the
//! whole import, naming its file and line, and nothing is written. Then the documents are
//! written in batches as idempotent upserts keyed as chat21 keyed them (a group by `uid`, a
//! message by `timelineOf` and `message_id`, a conversation by `timelineOf` and `conversWith`),
//! so running the import again, whole or after a failure, leaves the store as one run does.

pub mod documents;
pub mod extended_json;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::store::{ImportedConversation, Store, Write};
use documents::{Collection, Document, Malformed, Skip};

/// Documents written per transaction.
const BATCH: usize = 500;
/// Positions of skipped documents named per reason, so a large skip does not flood the terminal.
const SHOWN_SKIPS: usize = 10;

/// The exported collections to import; at least one.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub groups: Option<PathBuf>,
    pub conversations: Option<PathBuf>,
    pub messages: Option<PathBuf>,
}

impl Files {
    /// The files given, in the order they are imported: groups first, so that they route as
    /// soon as inboxd starts even if a later file fails.
    fn each(&self) -> impl Iterator<Item = (Collection, &Path)> {
        [
            (Collection::Groups, &self.groups),
            (Collection::Messages, &self.messages),
            (Collection::Conversations, &self.conversations),
        ]
        .into_iter()
        .filter_map(|(collection, path)| path.as_deref().map(|path| (collection, path)))
    }
}

/// Where a document is in its file: a line (one document per line, mongoexport's default), or
/// an element of a `--jsonArray` export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Line(usize),
    Element(usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line(n) => write!(f, "line {n}"),
            Position::Element(n) => write!(f, "document {n} of the array"),
        }
    }
}

/// What one collection's import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub read: u64,
    pub imported: u64,
    /// Documents left out, by reason, with the positions of the first few.
    pub skipped: BTreeMap<Skip, (u64, Vec<Position>)>,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} read, {} imported", self.read, self.imported)?;
        for (skip, (count, shown)) in &self.skipped {
            write!(f, ", {count} skipped {}", skip.describe())?;
            if !shown.is_empty() {
                let shown: Vec<String> = shown.iter().map(Position::to_string).collect();
                let more = if *count as usize > shown.len() { ", …" } else { "" };
                write!(f, " ({}{more})", shown.join(", "))?;
            }
        }
        Ok(())
    }
}

/// A document that refused the import.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {position}: {error}")]
pub struct Refused {
    pub file: String,
    pub position: Position,
    pub error: Malformed,
}

/// Checks every file, then imports them into `store` for app `app`; what each collection did.
///
/// # Errors
/// When a file cannot be read, a document is malformed (nothing is written then: the error
/// names each refused file and the first bad document in it), or the store fails (the error
/// says what was written before; importing again is safe).
pub async fn chat21(store: &Store, app: &str, files: &Files) -> anyhow::Result<Vec<(Collection, Counts)>> {
    let mut refused = Vec::new();
    for (collection, path) in files.each() {
        let checked = documents_of(path, collection, app, |_, _| Ok(()));
        match checked {
            Ok(()) => {}
            Err(FileError::Refused(error)) => refused.push(error.to_string()),
            Err(FileError::Io(error)) => return Err(error),
        }
    }
    anyhow::ensure!(
        refused.is_empty(),
        "nothing imported: malformed documents in {}\n{}",
        if refused.len() == 1 { "one file" } else { "several files" },
        refused.join("\n")
    );
    let mut report: Vec<(Collection, Counts)> = Vec::new();
    for (collection, path) in files.each() {
        let counts = import_file(store, app, collection, path).await.with_context(|| {
            let done: Vec<String> = report.iter().map(|(c, counts)| format!("{}: {counts}", c.name())).collect();
            let done = if done.is_empty() { "nothing before it".to_owned() } else { done.join("; ") };
            format!("importing {} ({done}); running the import again is safe", path.display())
        })?;
        report.push((collection, counts));
    }
    Ok(report)
}

/// Writes the documents of one file, [`BATCH`] at a time.
async fn import_file(store: &Store, app: &str, collection: Collection, path: &Path) -> anyhow::Result<Counts> {
    let mut batch: Vec<Document> = Vec::with_capacity(BATCH);
    // The file was checked: reading it again cannot refuse a document, only fail to read.
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<Document>>(2);
    let (path_owned, app_owned) = (path.to_owned(), app.to_owned());
    let reader = tokio::task::spawn_blocking(move || {
        let mut counts = Counts::default();
        let read = documents_of(&path_owned, collection, &app_owned, |position, document| {
            counts.read += 1;
            if let Document::Skipped(skip) = document {
                let (count, shown) = counts.skipped.entry(skip).or_default();
                *count += 1;
                if skip == Skip::UnroutableId && shown.len() < SHOWN_SKIPS {
                    shown.push(position);
                }
                return Ok(());
            }
            batch.push(document);
            if batch.len() == BATCH {
                sender
                    .blocking_send(std::mem::take(&mut batch))
                    .map_err(|_| FileError::Io(anyhow::anyhow!("the writer stopped")))?;
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = sender.blocking_send(batch);
        }
        read.map(|()| counts)
    });
    let now = crate::clock::now_ms();
    let mut imported = 0;
    while let Some(documents) = receiver.recv().await {
        write(store, app, &documents, now).await?;
        imported += documents.len() as u64;
    }
    let read = reader.await.context("the file reader panicked")?;
    let mut counts = match read {
        Ok(counts) => counts,
        Err(FileError::Io(error)) => return Err(error),
        Err(FileError::Refused(error)) => return Err(error.into()),
    };
    counts.imported = imported;
    Ok(counts)
}

/// Writes one batch in one transaction. Times are chat21's, never later than `now` (a client
/// clock ahead would pin a conversation at the top of its list).
async fn write(store: &Store, app: &str, documents: &[Document], now: i64) -> anyhow::Result<()> {
    let mut writes = Vec::new();
    let mut conversations = Vec::new();
    for document in documents {
        match document {
            Document::Group(group) => writes.push(Write::Group(group.clone())),
            Document::Message(m) => writes.push(Write::Message {
                inbox: m.inbox.clone(),
                conversation: m.conversation.clone(),
                message_id: m.message_id.clone(),
                status: m.status,
                sent_at: m.timestamp.min(now),
                body: m.body.to_string().into(),
                conversation_update: None,
            }),
            Document::Conversation(c) => conversations.push(ImportedConversation {
                inbox: c.inbox.clone(),
                conversation: c.conversation.clone(),
                last_message: c.body.to_string(),
                is_new: c.is_new,
                archived: c.archived,
                updated_at: c.timestamp.min(now),
            }),
            Document::Skipped(_) => {}
        }
    }
    if !writes.is_empty() {
        store.apply(app, writes.into()).await.context("writing to the store")?;
    }
    if !conversations.is_empty() {
        store.import_conversations(app, &conversations).await.context("writing conversations to the store")?;
    }
    Ok(())
}

enum FileError {
    Refused(Refused),
    Io(anyhow::Error),
}

/// Calls `each` with every document of `path` (mongoexport's one document per line, or a
/// `--jsonArray` export), in order; stops at the first malformed one.
fn documents_of(
    path: &Path,
    collection: Collection,
    app: &str,
    mut each: impl FnMut(Position, Document) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let shown = path.display().to_string();
    let io = |e: std::io::Error| FileError::Io(anyhow::Error::new(e).context(format!("reading {shown}")));
    let refused = |position, error| FileError::Refused(Refused { file: shown.clone(), position, error });
    let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
    if starts_with_array(&mut reader).map_err(io)? {
        let items: Vec<Value> = serde_json::from_reader(reader)
            .map_err(|e| refused(Position::Line(e.line()), Malformed::Json(e.to_string())))?;
        for (index, item) in items.into_iter().enumerate() {
            let position = Position::Element(index + 1);
            let document = documents::read_value(collection, app, item).map_err(|e| refused(position, e))?;
            each(position, document)?;
        }
        return Ok(());
    }
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        number += 1;
        let read = reader.read_line(&mut line);
        match read {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(refused(Position::Line(number), Malformed::Json("not UTF-8".into())));
            }
            Err(e) => return Err(io(e)),
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let position = Position::Line(number);
        let document = documents::read(collection, app, text).map_err(|e| refused(position, e))?;
        each(position, document)?;
    }
}

/// Whether the first non-blank byte is `[` (a `--jsonArray` export); consumes only blanks.
fn starts_with_array(reader: &mut BufReader<impl Read>) -> std::io::Result<bool> {
    loop {
        let buffer = reader.fill_buf()?;
        let Some(&first) = buffer.first() else { return Ok(false) };
        if first.is_ascii_whitespace() {
            reader.consume(1);
            continue;
        }
        return Ok(first == b'[');
    }
}
