//! Element lists read after the rest of a changes object, one element at a time.
//!
//! A full changes object of a 10 MB document is mostly the elements of its arrays. Read whole,
//! their JSON and then their [`WElem`]s are held at once, each about the size of the replica made
//! from them (docs/PROTOCOL.md, "Reading a full changes object"). A new replica
//! (`streamed.rs`) instead has the compact form read with every element list left in the bytes
//! (`compact::decode_deferring`), and here each list is read in two passes. The first reads
//! every element's place (its id and origins) without its value, so that the elements can be
//! taken in id order, as a merge takes them. The second reads one element whole at a time, to
//! be checked, merged and dropped before the next.

use crate::engine::compact::{ItemAt, Later, Lists};
use crate::engine::error::{Error, Result};
use crate::engine::json::Json;
use crate::engine::stamp::Stamp;

use super::{At, Reading, WElem, elem_place, elem_value, spend};

/// The element lists of one array node, left unread.
pub(crate) struct Deferred {
    live: Later,
    removed: Option<Later>,
    /// The array node's version: its elements' implied one.
    u: u64,
    /// Where the array node is in the changes object, for errors.
    at: String,
}

/// What places an element of a deferred list, read in the first pass, and where the element
/// is, to be read whole in the second.
pub(crate) struct Head {
    pub id: Stamp,
    pub origin: Option<Stamp>,
    pub right: Option<Stamp>,
    /// From the list of removed elements (`_s.ri`).
    pub removed: bool,
    /// Whether its value is an object (a node, or a text): room for nodes is made by these.
    pub object: bool,
    at: ItemAt,
}

// The size docs/PROTOCOL.md gives ("Reading a full changes object"): what reading an array's
// elements holds per element besides the replica.
const _: () = assert!(std::mem::size_of::<Head>() == 56);

/// Leaves the lists of array node `id` (its live elements `live`, its `_s.ri`) for later.
pub(super) fn defer(
    r: &mut Reading,
    id: Stamp,
    live: Later,
    ri: Option<&Json<'_>>,
    at: &At<'_>,
    u: u64,
) -> Result<()> {
    let removed = match ri {
        None => None,
        Some(Json::Later(l)) => Some(*l),
        Some(_) => return Err(Error::malformed(format!("{at}._s.ri"), "must be an array")),
    };
    let Some(deferred) = r.deferred.as_mut() else {
        return Err(Error::malformed(at, "a list left unread where none may be"));
    };
    let lists = Deferred {
        live,
        removed,
        u,
        at: at.to_string(),
    };
    if deferred.insert(id, lists).is_some() {
        return Err(Error::malformed(at, format!("node id {id} appears twice")));
    }
    Ok(())
}

impl Reading {
    /// The lists left unread of array node `id`, taken out.
    pub(crate) fn take_deferred(&mut self, id: Stamp) -> Option<Deferred> {
        self.deferred.as_mut()?.remove(&id)
    }

    /// Whether lists left unread are still waiting.
    pub(crate) fn any_deferred(&self) -> bool {
        self.deferred.as_ref().is_some_and(|d| !d.is_empty())
    }
}

impl Deferred {
    /// How many elements the lists hold.
    pub(crate) fn len(&self) -> usize {
        self.live.count as usize + self.removed.map_or(0, |l| l.count as usize)
    }

    /// The first pass: each element's place, live elements first, each in its list's order.
    ///
    /// # Errors
    ///
    /// What reading the elements whole would refuse of their places and fields but their
    /// values, and damaged bytes.
    pub(crate) fn heads(&self, lists: &Lists<'_>, r: &mut Reading) -> Result<Vec<Head>> {
        let at = At::Path(&self.at);
        spend(&mut r.budget, self.len(), &at)?;
        let mut heads = Vec::with_capacity(self.len());
        let both = [
            (Some(&self.live), false, "v"),
            (self.removed.as_ref(), true, "_s.ri"),
        ];
        for (list, removed, name) in both {
            let Some(list) = list else { continue };
            let l_at = at.f(name);
            // The previous entry's id and right origin, which an entry may leave implied.
            let mut prev = (None, None);
            for (i, item) in lists.items(list, true).enumerate() {
                let item = item?;
                let e_at = l_at.i(i);
                let m = item
                    .json
                    .as_object()
                    .ok_or_else(|| Error::malformed(e_at, "an element must be an object"))?;
                let (id, origin, right) = elem_place(m, &e_at, removed, prev)?;
                prev = (Some(id), right);
                heads.push(Head {
                    id,
                    origin,
                    right,
                    removed,
                    object: item.v_is_object,
                    at: item.at,
                });
            }
        }
        Ok(heads)
    }

    /// The second pass, for one element: read whole, its place from its head.
    ///
    /// # Errors
    ///
    /// Whatever reading the element's value refuses.
    pub(crate) fn elem(&self, lists: &Lists<'_>, head: &Head, r: &mut Reading) -> Result<WElem> {
        let at = At::Path(&self.at);
        let list = match (head.removed, &self.removed) {
            (false, _) => &self.live,
            (true, Some(l)) => l,
            (true, None) => return Err(Error::malformed(at, "a removed element of no list")),
        };
        let json = lists.item(list, head.at)?;
        let m = json
            .as_object()
            .ok_or_else(|| Error::malformed(at, "an element must be an object"))?;
        let (val, removed) = elem_value(m, &at, head.removed, head.id, r, self.u)?;
        Ok(WElem {
            id: head.id,
            origin: head.origin,
            right: head.right,
            val,
            removed,
        })
    }
}
