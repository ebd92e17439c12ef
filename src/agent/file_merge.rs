//! A save of a bound file is the difference between the file and its shadow (what the agent last
//! read or wrote). Usually the document still equals the shadow and that difference is applied as
//! it is; but merges may have landed meanwhile (the file was invalid or missing, or the user saved
//! while a merge was being written). Then the save is merged three ways here — shadow, file,
//! document — so that neither the save nor the merge is lost, before it is applied as edits.

use serde_json::{Map, Value};

/// The document's content with the user's save (`file`, against `shadow`) applied to `doc`.
/// Object keys merge one by one; arrays of unchanged length element by element, other arrays
/// as sequences (see [`arrays`]); strings by their character differences when these do not
/// overlap. Where both changed the same value in
/// ways that cannot be combined, the save wins: it is the latest local edit.
pub fn merge3(shadow: &Value, file: &Value, doc: &Value) -> Value {
    if file == shadow {
        return doc.clone();
    }
    if doc == shadow || doc == file {
        return file.clone();
    }
    match (shadow, file, doc) {
        (Value::Object(s), Value::Object(f), Value::Object(d)) => Value::Object(objects(s, f, d)),
        (Value::Array(s), Value::Array(f), Value::Array(d))
            if s.len() == f.len() && s.len() == d.len() =>
        {
            let merged = s.iter().zip(f).zip(d).map(|((s, f), d)| merge3(s, f, d));
            Value::Array(merged.collect())
        }
        (Value::Array(s), Value::Array(f), Value::Array(d)) => Value::Array(arrays(s, f, d)),
        (Value::String(s), Value::String(f), Value::String(d)) => {
            Value::String(strings(s, f, d).unwrap_or_else(|| f.clone()))
        }
        _ => file.clone(),
    }
}

fn objects(
    s: &Map<String, Value>,
    f: &Map<String, Value>,
    d: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for k in f.keys().chain(d.keys()).chain(s.keys()) {
        if out.contains_key(k) {
            continue;
        }
        let merged = match (s.get(k), f.get(k), d.get(k)) {
            // Added on both sides as objects: both sets of keys are kept.
            (None, Some(fv @ Value::Object(_)), Some(dv @ Value::Object(_))) => {
                Some(merge3(&Value::Object(Map::new()), fv, dv))
            }
            (base, Some(fv), Some(dv)) => Some(merge3(base.unwrap_or(&Value::Null), fv, dv)),
            // Removed on one side: gone, unless the other side changed it (that edit is kept).
            (Some(sv), None, Some(dv)) | (Some(sv), Some(dv), None) => {
                (sv != dv).then(|| dv.clone())
            }
            (None, Some(v), None) | (None, None, Some(v)) => Some(v.clone()),
            _ => None,
        };
        if let Some(v) = merged {
            out.insert(k.clone(), v);
        }
    }
    out
}

/// What one side did to the shadow's elements, from a longest-common-subsequence alignment
/// (Myers' diff over the elements' JSON text).
struct SideEdits {
    /// Per shadow element: whether this side kept it unchanged.
    kept: Vec<bool>,
    /// Per shadow element: its new value when this side replaced it by exactly one element.
    replaced: Vec<Option<Value>>,
    /// Per position (before shadow element i; the last: at the end): elements inserted there.
    inserted: Vec<Vec<Value>>,
}

fn side_edits(s: &[Value], x: &[Value]) -> SideEdits {
    use similar::DiffOp;
    let text = |v: &[Value]| v.iter().map(Value::to_string).collect::<Vec<_>>();
    let (old, new) = (text(s), text(x));
    let mut e = SideEdits {
        kept: vec![false; s.len()],
        replaced: vec![None; s.len()],
        inserted: vec![Vec::new(); s.len() + 1],
    };
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, &old, &new) {
        match op {
            DiffOp::Equal { old_index, len, .. } => {
                e.kept[old_index..old_index + len].fill(true);
            }
            DiffOp::Delete { .. } => {}
            DiffOp::Insert {
                old_index,
                new_index,
                new_len,
            } => e.inserted[old_index].extend_from_slice(&x[new_index..new_index + new_len]),
            // Paired in order: the first elements replace the old ones one to one, the rest
            // are removed (old ones) or inserted after them (new ones).
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let paired = old_len.min(new_len);
                for k in 0..paired {
                    e.replaced[old_index + k] = Some(x[new_index + k].clone());
                }
                e.inserted[old_index + old_len]
                    .extend_from_slice(&x[new_index + paired..new_index + new_len]);
            }
        }
    }
    e
}

/// Two sides' edits of one array, applied together (a three-way merge of sequences, as diff3
/// does for lines): elements both kept stay; an element one side removed goes, unless the
/// other side changed it; an element both changed is merged ([`merge3`]); what each side
/// inserted is kept in place, the save's first where both inserted at one place.
fn arrays(s: &[Value], f: &[Value], d: &[Value]) -> Vec<Value> {
    let (fe, de) = (side_edits(s, f), side_edits(s, d));
    let mut out = Vec::with_capacity(f.len().max(d.len()));
    for (i, base) in s.iter().enumerate() {
        out.extend(fe.inserted[i].iter().cloned());
        out.extend(de.inserted[i].iter().cloned());
        match (fe.kept[i], &fe.replaced[i], de.kept[i], &de.replaced[i]) {
            (true, _, true, _) => out.push(base.clone()),
            (_, Some(fv), _, Some(dv)) => out.push(merge3(base, fv, dv)),
            (_, Some(v), true, _) | (true, _, _, Some(v)) => out.push(v.clone()),
            // Removed on one side, changed on the other: the change is kept.
            (false, None, _, Some(v)) | (_, Some(v), false, None) => out.push(v.clone()),
            _ => {}
        }
    }
    out.extend(fe.inserted[s.len()].iter().cloned());
    out.extend(de.inserted[s.len()].iter().cloned());
    out
}

/// Both sides' character edits of `s` applied together, or None when they overlap.
fn strings(s: &str, f: &str, d: &str) -> Option<String> {
    let mut all = edits(s, f);
    all.extend(edits(s, d));
    all.sort_by_key(|e| (e.0, e.1));
    // Overlapping ranges, or two insertions at one place, cannot be combined.
    if all.windows(2).any(|w| w[1].0 < w[0].1 || w[1].0 == w[0].0) {
        return None;
    }
    let mut chars: Vec<char> = s.chars().collect();
    for (start, end, insert) in all.into_iter().rev() {
        chars.splice(start..end, insert.chars());
    }
    Some(chars.into_iter().collect())
}

/// The changes turning `old` into `new`: (start, end, replacement) in characters of `old`.
fn edits(old: &str, new: &str) -> Vec<(usize, usize, String)> {
    let mut out: Vec<(usize, usize, String)> = Vec::new();
    let mut at = 0;
    for chunk in dissimilar::diff(old, new) {
        let (del, ins) = match chunk {
            dissimilar::Chunk::Equal(x) => {
                at += x.chars().count();
                continue;
            }
            dissimilar::Chunk::Delete(x) => (x.chars().count(), ""),
            dissimilar::Chunk::Insert(x) => (0, x),
        };
        match out.last_mut() {
            Some(last) if last.1 == at => {
                last.1 += del;
                last.2.push_str(ins);
            }
            _ => out.push((at, at + del, ins.to_string())),
        }
        at += del;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge3;
    use serde_json::json;

    /// Arrays whose length one side changed merge as sequences: a push made while the file was
    /// saved with another element is kept beside it (it used to be lost: the save's array won
    /// whole).
    #[test]
    fn elements_added_and_removed_on_both_sides_are_all_kept() {
        let shadow = json!({"items": ["a", "b", "c"]});
        assert_eq!(
            merge3(
                &json!({"items": ["a"]}),
                &json!({"items": ["a", "file"]}),
                &json!({"items": ["a", "push"]})
            ),
            json!({"items": ["a", "file", "push"]})
        );
        assert_eq!(
            merge3(
                &shadow,
                &json!({"items": ["x", "a", "c"]}),
                &json!({"items": ["a", "b", "c", "y"]})
            ),
            json!({"items": ["x", "a", "c", "y"]})
        );
        // An element one side removed and the other changed: the change is kept.
        assert_eq!(
            merge3(
                &json!([{"n": 1}, {"n": 2}]),
                &json!([{"n": 1}]),
                &json!([{"n": 1}, {"n": 20}, {"n": 3}])
            ),
            json!([{"n": 1}, {"n": 20}, {"n": 3}])
        );
        // An element both changed, and one added: merged key by key, the addition kept.
        assert_eq!(
            merge3(
                &json!([{"a": 1, "b": 1}]),
                &json!([{"a": 2, "b": 1}, {"new": true}]),
                &json!([{"a": 1, "b": 3}])
            ),
            json!([{"a": 2, "b": 3}, {"new": true}])
        );
    }

    #[test]
    fn a_save_and_a_merge_made_meanwhile_are_both_kept() {
        let shadow = json!({"a": 1, "b": "the cat sat", "l": [1, 2], "gone": 0, "kept": 1});
        let file = json!({"a": 2, "b": "the dog sat", "l": [1, 3], "kept": 2, "new": true});
        let doc = json!({"a": 1, "b": "the cat sat down", "l": [4, 2], "gone": 0, "peer": "x"});
        assert_eq!(
            merge3(&shadow, &file, &doc),
            json!({"a": 2, "b": "the dog sat down", "l": [4, 3], "kept": 2, "new": true, "peer": "x"})
        );
        // The same value changed both ways: the save wins.
        assert_eq!(
            merge3(&json!({"a": 1}), &json!({"a": 2}), &json!({"a": 3})),
            json!({"a": 2})
        );
        // Overlapping string edits: the save's string.
        assert_eq!(
            merge3(&json!("abc"), &json!("aXc"), &json!("aYc")),
            json!("aXc")
        );
        // Two insertions at one place are ambiguous in order: the save's string.
        assert_eq!(
            merge3(&json!("ab"), &json!("aXb"), &json!("aYb")),
            json!("aXb")
        );
        // An object both added under one key: both sets of keys, the save's value where both
        // have one (a file first bound to a document that came from a peer: shadow `{}`).
        assert_eq!(
            merge3(
                &json!({}),
                &json!({"o": {"x": 1, "y": 1}, "f": 1}),
                &json!({"o": {"y": 2, "z": 2}, "d": 2})
            ),
            json!({"o": {"x": 1, "y": 1, "z": 2}, "f": 1, "d": 2})
        );
    }
}
