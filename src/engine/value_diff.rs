//! The difference between two JSON values as a list of edits, with no document involved: what
//! [`Document::update`](crate::engine::Document::update) applies, and what a bound file's save is
//! turned into (the file against its shadow, as in differential synchronization: Fraser,
//! "Differential Synchronization", DocEng 2009).
//!
//! Objects differ key by key; arrays by a longest-common-subsequence match of their elements
//! (Myers' algorithm, from `similar`), after the common beginning and end are set aside by plain
//! equality, so one changed element of a long array costs one walk of it; strings are set whole
//! here and the document turns a string set over a string into character edits. The cost is
//! about one comparison of the two values, far less than parsing either.

use crate::engine::path::{self, Segment};
use serde_json::Value;

/// One edit, at a path in [`path`](crate::engine::path) syntax, relative to the value diffed.
/// Applied in the order given, each path is valid when its turn comes (array edits of one array
/// come from its end towards its start).
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Set the object key or array element at `path` to the value (a string over a string
    /// becomes that text's character difference when applied).
    Set(String, Value),
    /// Remove the object key at `path`.
    Remove(String),
    /// At the array at `path`: remove `remove` elements at index `at`, then insert `insert`.
    Splice {
        path: String,
        at: usize,
        remove: usize,
        insert: Vec<Value>,
    },
}

/// How long the element match of one array may take before it settles for a coarser answer
/// (still correct: unmatched elements are replaced).
const ARRAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// The edits turning `old` into `new`, below the value at `at` (segments of its path). Equal
/// values give no edits; a value of another kind is set whole.
pub fn diff(at: &[Segment], old: &Value, new: &Value) -> Vec<Edit> {
    let mut out = Vec::new();
    let mut segs = at.to_vec();
    walk(&mut segs, old, new, &mut out);
    out
}

/// Each part of the two values is compared once: containers by their parts, the rest by
/// equality.
fn walk(segs: &mut Vec<Segment>, old: &Value, new: &Value, out: &mut Vec<Edit>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.push(Edit::Remove(child(segs, Segment::Key(k.clone()))));
            }
            for (k, v) in n {
                segs.push(Segment::Key(k.clone()));
                match o.get(k) {
                    Some(ov) => walk(segs, ov, v, out),
                    None => out.push(Edit::Set(path::render(segs), v.clone())),
                }
                segs.pop();
            }
        }
        (Value::Array(o), Value::Array(n)) => array(segs, o, n, out),
        _ if old == new => {}
        _ => out.push(Edit::Set(path::render(segs), new.clone())),
    }
}

fn child(segs: &[Segment], last: Segment) -> String {
    let mut c = segs.to_vec();
    c.push(last);
    path::render(&c)
}

/// Arrays: the common beginning and end by equality, the middle by Myers over a hash of each
/// element; matched runs are left alone, paired unmatched elements diffed, the rest spliced.
fn array(segs: &mut Vec<Segment>, old: &[Value], new: &[Value], out: &mut Vec<Edit>) {
    let head = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let tail = old[head..]
        .iter()
        .rev()
        .zip(new[head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let (om, nm) = (&old[head..old.len() - tail], &new[head..new.len() - tail]);
    let (ok, nk): (Vec<u64>, Vec<u64>) =
        (om.iter().map(hash).collect(), nm.iter().map(hash).collect());
    let deadline = std::time::Instant::now() + ARRAY_DEADLINE;
    let ops =
        similar::capture_diff_slices_deadline(similar::Algorithm::Myers, &ok, &nk, Some(deadline));
    // From the end, so that the indexes of the edits still to come stay valid.
    for op in ops.into_iter().rev() {
        let (o, ol, n, nl) = match op {
            similar::DiffOp::Equal {
                old_index,
                new_index,
                len,
            } => (old_index, len, new_index, len),
            similar::DiffOp::Delete {
                old_index,
                old_len,
                new_index,
            } => (old_index, old_len, new_index, 0),
            similar::DiffOp::Insert {
                old_index,
                new_index,
                new_len,
            } => (old_index, 0, new_index, new_len),
            similar::DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => (old_index, old_len, new_index, new_len),
        };
        let paired = ol.min(nl);
        if ol > paired || nl > paired {
            out.push(Edit::Splice {
                path: path::render(segs),
                at: head + o + paired,
                remove: ol - paired,
                insert: nm[n + paired..n + nl].to_vec(),
            });
        }
        // Pairs (and a hash that matched unequal values) are made equal by difference.
        for i in (0..paired).rev() {
            segs.push(Segment::Index(head + o + i));
            walk(segs, &om[o + i], &nm[n + i], out);
            segs.pop();
        }
    }
}

/// A hash of a JSON value's content (no text made).
fn hash(v: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    fn feed(v: &Value, h: &mut std::hash::DefaultHasher) {
        match v {
            Value::Null => 0u8.hash(h),
            Value::Bool(b) => (1u8, b).hash(h),
            Value::Number(n) => (2u8, n.as_str()).hash(h),
            Value::String(s) => (3u8, s).hash(h),
            Value::Array(a) => {
                (4u8, a.len()).hash(h);
                a.iter().for_each(|x| feed(x, h));
            }
            Value::Object(m) => {
                (5u8, m.len()).hash(h);
                for (k, x) in m {
                    k.hash(h);
                    feed(x, h);
                }
            }
        }
    }
    let mut h = std::hash::DefaultHasher::new();
    feed(v, &mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn one_changed_element_of_a_long_array_is_one_edit() {
        let old: Vec<Value> = (0..1000).map(|i| json!({"n": i, "done": false})).collect();
        let mut new = old.clone();
        new[500]["done"] = json!(true);
        let edits = diff(&[], &json!({"r": old}), &json!({"r": new}));
        assert_eq!(edits, vec![Edit::Set("r[500].done".into(), json!(true))]);
    }

    #[test]
    fn inserted_and_removed_elements_are_splices_from_the_end() {
        let edits = diff(
            &[],
            &json!({"a": [1, 2, 3, 4]}),
            &json!({"a": [0, 1, 3, 4, 5]}),
        );
        assert_eq!(
            edits,
            vec![
                Edit::Splice {
                    path: "a".into(),
                    at: 4,
                    remove: 0,
                    insert: vec![json!(5)]
                },
                Edit::Splice {
                    path: "a".into(),
                    at: 1,
                    remove: 1,
                    insert: vec![]
                },
                Edit::Splice {
                    path: "a".into(),
                    at: 0,
                    remove: 0,
                    insert: vec![json!(0)]
                },
            ]
        );
    }

    #[test]
    fn keys_are_removed_added_and_changed() {
        let edits = diff(
            &[Segment::Key("x".into())],
            &json!({"a": 1, "b": {"c": "s"}}),
            &json!({"b": {"c": "t"}, "d": null}),
        );
        assert_eq!(
            edits,
            vec![
                Edit::Remove("x.a".into()),
                Edit::Set("x.b.c".into(), json!("t")),
                Edit::Set("x.d".into(), json!(null)),
            ]
        );
    }
}
