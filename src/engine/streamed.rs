//! A new replica made as its full changes object is read, one array element at a time.
//!
//! Made the usual way, a replica of a 10 MB document built from its full changes object first
//! holds the object's JSON values and then its parsed form (`Changes`), each about the size of
//! the replica itself, beside the replica being built: 7.6 times the document's JSON at the
//! peak. Here the compact form is read with every element list left in the bytes
//! (`compact::decode_deferring`); the rest, the skeleton, is checked and merged as usual. When
//! the merge reaches an array, its elements are read in two passes (`wire/deferred.rs`): their
//! places first, then, in id order, one element whole at a time, which is checked, merged and
//! dropped before the next. What is held besides the replica is the bytes, their string table,
//! the ids seen and one place per element.
//!
//! Checking as it merges is safe only for a new replica: nothing else sees it until it is
//! whole, and a refusal drops it. It gives the same replica as checking all first, because a
//! new replica's checks see nothing of it but what they checked themselves: a node id seen
//! twice is refused before it could be found merged. Anything refused, or unusual (an element
//! or text whose origin is not in the changes, a repair), is read again the usual way, which
//! says why in the same words or merges what is left out the same way. Tests compare both ways.

use crate::engine::HashSet;
use crate::engine::compact::{self, Lists};
use crate::engine::doc::{Document, Ix, ROOT};
use crate::engine::error::{Error, Result};
use crate::engine::merge::{Check, CheckState, Loc, Merging};
use crate::engine::stamp::{ClientId, Stamp};
use crate::engine::wire::{Changes, Deferred, Reading};

/// What a changes object says of itself: enough to decide, before any of its document is read,
/// whether a new replica is to be made from it (see [`Changes::envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub doc_id: String,
    pub sent_by: ClientId,
    /// Whether it carries the whole document (`changesSince` 0, and the document): a new
    /// replica can be made from it.
    pub whole: bool,
    /// Its `writesTo` tags.
    pub writes_to: Vec<String>,
}

impl Changes {
    /// The envelope of the changes object in `bytes`. The compact form is walked with its
    /// element lists left unread (`compact::decode_deferring`), so no element is built; JSON
    /// text is read whole.
    ///
    /// # Errors
    ///
    /// As [`Changes::from_bytes`], for everything but what the element lists hold: that is
    /// found when they are read ([`Document::from_bytes`]).
    pub fn envelope(bytes: &[u8]) -> Result<Envelope> {
        let of = |c: &Changes| Envelope {
            doc_id: c.doc_id.clone(),
            sent_by: c.sent_by,
            whole: c.changes_since == 0 && c.root.is_some(),
            writes_to: c.writes_to.clone(),
        };
        if !compact::is_compact(bytes) {
            return Ok(of(&Changes::from_bytes(bytes)?));
        }
        let (json, _lists) = compact::decode_deferring(bytes)?;
        let (skeleton, _reading) = Changes::read_deferring(&json)?;
        Ok(of(&skeleton))
    }
}

/// The deepest array whose elements are read as they are merged (the root is at 1).
const MOST_STREAMED_DEPTH: usize = 8;

/// What a streamed read holds between the lists it reads.
pub(crate) struct Stream<'a> {
    lists: Lists<'a>,
    reading: Reading,
    /// The skeleton: its envelope bounds every stamp.
    changes: &'a Changes,
    /// What the checks found so far (the node ids seen, the highest clock value); out while
    /// an element is checked.
    check: Option<CheckState>,
    /// Something was refused (or unusual): the replica is dropped.
    failed: bool,
}

impl Document {
    /// Creates a new replica (with a fresh client id) from a full changes object's bytes, in
    /// either form ([`Changes::from_bytes`]). See [`Document::from_bytes_as`].
    ///
    /// # Errors
    ///
    /// As [`Document::from_bytes_as`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_as(bytes, ClientId::random())
    }

    /// Creates a new replica with the given client id from a full changes object's bytes, in
    /// either form: the same replica as [`Document::from_changes_as`] of
    /// [`Changes::from_bytes`], made from the compact form while it is read, holding one array
    /// element at a time instead of the whole parsed object (see `streamed.rs`).
    ///
    /// # Errors
    ///
    /// Those of [`Changes::from_bytes`] and [`Document::from_changes_as`].
    pub fn from_bytes_as(bytes: &[u8], client: ClientId) -> Result<Self> {
        if compact::is_compact(bytes)
            && let Some(doc) = Self::streamed(bytes, client)
        {
            return Ok(doc);
        }
        Self::from_changes_as(&Changes::from_bytes(bytes)?, client)
    }

    /// The replica made while reading; `None` when anything is refused or unusual.
    fn streamed(bytes: &[u8], client: ClientId) -> Option<Self> {
        let (json, lists) = compact::decode_deferring(bytes).ok()?;
        let (changes, reading) = Changes::read_deferring(&json).ok()?;
        drop(json);
        if changes.repair.is_some() {
            return None;
        }
        let mut doc = Self::new_for(&changes, client).ok()?;
        doc.admit(&changes).ok()?;
        let root = changes.root.as_ref()?;
        let mut check = Check::new(&changes);
        doc.check_node(root, Loc::Root, 1, &mut check).ok()?;
        let check = check.pause();
        if !check.skip.is_empty() || !check.skip_text.is_empty() {
            return None;
        }
        let mut stream = Stream {
            lists,
            reading,
            changes: &changes,
            check: Some(check),
            failed: false,
        };
        let (none, no_text) = (HashSet::default(), HashSet::default());
        let before = doc.version;
        let mut merging = Merging {
            u: before + 1,
            skip: &none,
            skip_text: &no_text,
            repair: false,
            changed: false,
            stream: Some(&mut stream),
        };
        doc.integrate(root, ROOT, &mut merging);
        let changed = merging.changed;
        if stream.failed || stream.reading.any_deferred() {
            return None;
        }
        doc.clock.observe(stream.check.as_ref()?.max_hlc);
        drop(stream);
        doc.conclude(&changes, before, changed, true);
        Some(doc)
    }

    /// Merges the element lists left unread of array node `id` (local `ix`), when this merge
    /// reads as it goes and left them; whether it did (else the node's elements are in the
    /// changes, merged as usual).
    pub(super) fn stream_list(&mut self, id: Stamp, ix: Ix, m: &mut Merging) -> bool {
        let Some(s) = m.stream.as_deref_mut() else {
            return false;
        };
        let Some(lists) = s.reading.take_deferred(id) else {
            return false;
        };
        if !s.failed
            && self.merge_list(&lists, ix, m).is_err()
            && let Some(s) = m.stream.as_deref_mut()
        {
            s.failed = true;
        }
        true
    }

    /// Checks and merges one array's elements in id order, each read whole only for its turn.
    fn merge_list(&mut self, lists: &Deferred, ix: Ix, m: &mut Merging) -> Result<()> {
        let depth = self.depth_of(ix);
        // Each level of lists read later walks the bytes of the levels under it again: past a
        // few levels the usual way is read instead, so a deep document costs a bounded number
        // of walks, not one per level.
        if depth > MOST_STREAMED_DEPTH {
            return Err(stream_broken("lists nested too deep to read later"));
        }
        let s = stream(m)?;
        let mut heads = lists.heads(&s.lists, &mut s.reading)?;
        // In id order, so that an element's origin (always older) comes first.
        heads.sort_by_key(|h| h.id);
        if heads.windows(2).any(|w| w[0].id == w[1].id) {
            return Err(Error::conflict(
                "$.changes",
                "an element id appears twice in one array",
            ));
        }
        let nested = heads.iter().filter(|h| h.object && !h.removed).count();
        self.reserve_nodes(nested);
        self.arr_mut(ix).reserve(heads.len());
        // Most often an element's origin is the element before it in id order.
        let before = std::cell::Cell::new(None);
        let ids = |id: &Stamp| {
            before.get() == Some(*id) || heads.binary_search_by_key(id, |h| h.id).is_ok()
        };
        for head in &heads {
            let s = stream(m)?;
            if s.failed {
                return Err(stream_broken("refused within"));
            }
            let e = lists.elem(&s.lists, head, &mut s.reading)?;
            let state = s.check.take().ok_or_else(|| stream_broken("no check"))?;
            let mut c = Check::resume(s.changes, state);
            let checked = self.check_one(&e, None, None, &ids, depth, &mut c);
            let state = s.check.insert(c.pause());
            checked?;
            if !state.skip.is_empty() || !state.skip_text.is_empty() {
                return Err(Error::conflict("$.changes", "an origin not in the changes"));
            }
            self.integrate_one(&e, ix, m);
            before.set(Some(head.id));
        }
        Ok(())
    }

    /// How deep node `ix` is: the root is at 1.
    fn depth_of(&self, ix: Ix) -> usize {
        let mut depth = 1;
        let mut at = ix;
        while let Some((p, _)) = self.nodes[at as usize].parent.get() {
            depth += 1;
            at = p;
        }
        depth
    }
}

fn stream<'m, 'x>(m: &'m mut Merging<'_, 'x>) -> Result<&'m mut Stream<'x>> {
    m.stream
        .as_deref_mut()
        .ok_or_else(|| stream_broken("no stream"))
}

/// Why a streamed read stops that is not about the changes (never shown: the changes are then
/// read the usual way).
fn stream_broken(what: &str) -> Error {
    Error::conflict("$.changes", what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn client(n: u8) -> ClientId {
        ClientId::parse(&format!("{n:016x}")).unwrap()
    }

    /// A document with what a full changes object can carry: nested arrays in elements,
    /// removed elements, elements inserted in the middle by two replicas (ids out of document
    /// order), replaced element values, texts in fields and in elements, removed and quoted
    /// keys, empty arrays.
    fn varied() -> Document {
        let start = json!({"records": [], "t": "some text", "m": {"x": 1, "y": [[1], []]}});
        let mut a = Document::with_ids(&start, "doc".into(), client(1)).unwrap();
        for i in 0..40 {
            let r = json!({"n": i, "tags": ["a", {"deep": [i]}], "s": format!("s{i}")});
            a.push("records", r).unwrap();
        }
        a.insert("records", 3, json!("mid")).unwrap();
        a.insert("records", 0, json!([1, [2, 3]])).unwrap();
        a.remove_at("records", 10).unwrap();
        a.remove_at("records", 20).unwrap();
        a.splice_text("records[5].s", 1, 0, "xyz").unwrap();
        a.set("records[7]", json!("replaced")).unwrap();
        a.splice_text("records[7]", 0, 1, "R").unwrap();
        a.remove("m.x").unwrap();
        a.set("__q", json!({"_r": []})).unwrap();
        a.set("records[8].tags", json!([])).unwrap();
        a.splice_text("t", 0, 4, "SOME").unwrap();
        let mut b = Document::from_changes_as(&a.changes(), client(2)).unwrap();
        b.insert("records", 2, json!({"from": "b"})).unwrap();
        b.remove_at("m.y", 0).unwrap();
        a.insert("records", 2, json!({"from": "a"})).unwrap();
        a.remove_at("records[12].tags", 0).unwrap();
        a.apply(&b.changes_for(a.client_id())).unwrap();
        a
    }

    fn usual(bytes: &[u8], client: ClientId) -> Result<Document> {
        Document::from_changes_as(&Changes::from_bytes(bytes)?, client)
    }

    #[test]
    fn a_replica_made_while_reading_is_the_usual_one() {
        let a = varied();
        let bytes = a.changes().to_compact();
        let streamed = Document::streamed(&bytes, client(3)).expect("read as it merges");
        let usual = usual(&bytes, client(3)).unwrap();
        assert_eq!(streamed.save(), usual.save());
        assert_eq!(streamed.to_json(), a.to_json());
        assert_eq!(streamed.digest(), a.digest());
    }

    #[test]
    fn the_deepest_document_is_read_the_usual_way() {
        let mut v = json!(["bottom"]);
        for i in 0..crate::engine::wire::MAX_DEPTH - 2 {
            v = if i % 2 == 0 {
                json!([v, i])
            } else {
                json!({"k": v})
            };
        }
        let a = Document::with_ids(&json!({ "deep": v }), "doc".into(), client(1)).unwrap();
        let bytes = a.changes().to_compact();
        // Too deep to read as it merges: read the usual way, the same replica.
        assert!(Document::streamed(&bytes, client(3)).is_none());
        let made = Document::from_bytes_as(&bytes, client(3)).unwrap();
        assert_eq!(made.save(), usual(&bytes, client(3)).unwrap().save());
    }

    /// The full changes object of `a` as JSON, changed by `f`, in the compact form.
    fn edited(a: &Document, f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v = a.changes().to_value();
        f(&mut v);
        compact::encode(&v)
    }

    fn records(v: &mut Value) -> &mut Vec<Value> {
        v["changes"]["records"]["v"].as_array_mut().unwrap()
    }

    #[test]
    fn what_it_refuses_is_refused_as_usual_in_the_same_words() {
        let a = varied();
        let cases: Vec<Vec<u8>> = vec![
            // An element twice.
            edited(&a, |v| {
                let l = records(v);
                let e = l[4].clone();
                l.push(e);
            }),
            // A node id twice: an element's value names the id of a node in a field (newer).
            edited(&a, |v| {
                let other = v["changes"]["___q"]["_s"]["id"].clone();
                assert!(other.is_string());
                records(v)[6]["v"]["_s"]["id"] = other;
            }),
            // An element that is not an object, and one with an unknown field.
            edited(&a, |v| records(v).push(json!(5))),
            edited(&a, |v| records(v)[9]["zz"] = json!(1)),
            // A bare array as a value, an element list that is not one.
            edited(&a, |v| records(v)[9]["v"] = json!([1])),
            edited(&a, |v| v["changes"]["records"]["v"] = json!({"x": 1})),
            // A stamp beyond what the sender says it holds, and one older than its origin.
            edited(&a, |v| {
                let c = client(1).to_string();
                let held = u64::from_str_radix(v["knows"][&c].as_str().unwrap(), 16).unwrap();
                let l = records(v);
                let last = l.len() - 1;
                l[last]["e"] = json!(format!("{:x}-{c}", held + 1000));
            }),
            edited(&a, |v| {
                records(v)[11]["e"] = json!(format!("1-{}", client(1)));
            }),
        ];
        let says = [
            "appears twice",
            "node id",
            "an element must be an object",
            "unknown element field",
            "bare array",
            "must be an array of elements",
            "newer than what the sender says it holds",
            "not newer than its origin",
        ];
        for (i, bytes) in cases.iter().enumerate() {
            assert!(Document::streamed(bytes, client(3)).is_none(), "case {i}");
            let streamed = Document::from_bytes_as(bytes, client(3)).map(|d| d.save());
            let usual = usual(bytes, client(3)).map(|d| d.save());
            let Err(e) = &usual else {
                panic!("case {i} is refused")
            };
            assert!(e.to_string().contains(says[i]), "case {i}: {e}");
            assert_eq!(
                streamed.map_err(|e| e.to_string()),
                usual.map_err(|e| e.to_string()),
                "case {i}"
            );
        }
    }

    #[test]
    fn an_element_whose_origin_is_missing_is_left_out_as_usual() {
        let a = varied();
        let bytes = edited(&a, |v| {
            // The last element now follows an element the changes do not hold (but the
            // sender's knowledge covers).
            let l = records(v);
            let last = l.len() - 1;
            l[last]["o"] = json!(format!("1-{}", client(1)));
        });
        assert!(Document::streamed(&bytes, client(3)).is_none());
        let streamed = Document::from_bytes_as(&bytes, client(3)).unwrap();
        let usual = usual(&bytes, client(3)).unwrap();
        assert_eq!(streamed.save(), usual.save());
        let len = |d: &Document| d.len("records").unwrap();
        assert_eq!(len(&streamed), len(&a) - 1);
    }
}
