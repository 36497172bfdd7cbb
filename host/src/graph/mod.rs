//! The dependency graph between pages.
//!
//! Pages are nodes; an edge `parent → child` is either [`EdgeKind::Data`]
//! (the child is a derived page recomputed from its parents) or
//! [`EdgeKind::Control`] (the child is only marked stale when the parent
//! changes). The graph is always acyclic: petgraph's
//! [`petgraph::acyclic::Acyclic`] keeps a topological order that is
//! repaired incrementally on each insert (Pearce–Kelly), so an edge that would
//! close a cycle is refused without a whole-graph check, and the error names
//! the cycle.
//!
//! Beside the petgraph structure the graph keeps a dense table of nodes (one
//! slot per petgraph node index) with the adjacency the propagation loop
//! needs, the page handle, and a *level*: `level(child) > level(parent)` for
//! every edge. Levels only ever rise (a removed edge leaves them valid), so
//! nodes of one level never depend on each other and can be recomputed in
//! parallel.
//!
//! Only pages that take part in an edge or a derivation are nodes; the graph
//! is mutated only by the commit path (under the commit lock).

pub mod propagate;

use crate::delta::change::EdgeKind;
use crate::registry::PageCell;
use crate::storage::image::{DerivedImage, GraphImage};
use crate::{Error, Result};
use petgraph::acyclic::Acyclic;
use petgraph::data::Build;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use shared_types::PageId;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Page ids are small dense integers handed out in order: a multiplicative
/// hash spreads them well and costs one multiply.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<PageId, V, BuildHasherDefault<IdHasher>>;

/// A derived page's binding to a recompute function (an index into the
/// function table) at a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) func: u32,
    pub(crate) version: u32,
}

/// One node of the dense table. A slot whose `cell` is `None` is free.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub(crate) page: PageId,
    pub(crate) cell: Option<PageCell>,
    pub(crate) len: usize,
    pub(crate) level: u32,
    /// Data parents in call order (the recompute function's arguments);
    /// a parent may appear more than once.
    pub(crate) args: Vec<u32>,
    /// Distinct children over data edges.
    pub(crate) data_children: Vec<u32>,
    pub(crate) control_children: Vec<u32>,
    pub(crate) control_parents: Vec<u32>,
    pub(crate) binding: Option<Binding>,
    pub(crate) stale: bool,
    pub(crate) pending: bool,
    pub(crate) forced: bool,
}

/// The dependency graph (see the module docs).
pub(crate) struct Graph {
    dag: Acyclic<StableDiGraph<PageId, EdgeKind, u32>>,
    index: IdMap<u32>,
    pub(crate) slots: Vec<Slot>,
    /// Nodes changed outside propagation whose data children are due.
    pub(crate) pending: Vec<u32>,
    /// Derived nodes that must be recomputed whatever their parents do.
    pub(crate) forced: Vec<u32>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.index.len())
            .field("edges", &self.dag.inner().edge_count())
            .field("pending", &self.pending.len())
            .field("forced", &self.forced.len())
            .finish()
    }
}

impl Default for Graph {
    fn default() -> Self {
        Self {
            dag: Acyclic::new(),
            index: IdMap::default(),
            slots: Vec::new(),
            pending: Vec::new(),
            forced: Vec::new(),
        }
    }
}

/// A page as the graph needs it: id, handle, length.
pub(crate) type PageHandle = (PageId, PageCell, usize);

impl Graph {
    /// Whether the graph has no nodes (the fast path of every write).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The dense index of a page's node.
    #[inline]
    pub(crate) fn node(&self, page: PageId) -> Option<u32> {
        if self.index.is_empty() {
            return None;
        }
        self.index.get(&page).copied()
    }

    /// One past the largest dense index.
    pub(crate) fn bound(&self) -> usize {
        self.slots.len()
    }

    /// Whether there is propagation work queued.
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.forced.is_empty()
    }

    fn ensure_node(&mut self, (page, cell, len): PageHandle) -> u32 {
        if let Some(&n) = self.index.get(&page) {
            return n;
        }
        let ix = self.dag.add_node(page).index() as u32;
        let i = ix as usize;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, Slot::default);
        }
        self.slots[i] = Slot { page, cell: Some(cell), len, ..Slot::default() };
        self.index.insert(page, ix);
        ix
    }

    fn edge_kind(&self, a: u32, b: u32) -> Option<EdgeKind> {
        let e = self.dag.inner().find_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize))?;
        self.dag.inner().edge_weight(e).copied()
    }

    /// The kind of the edge `from → to`, if there is one.
    pub(crate) fn edge(&self, from: PageId, to: PageId) -> Option<EdgeKind> {
        self.edge_kind(self.node(from)?, self.node(to)?)
    }

    /// Check that an edge `from → to` would keep the graph acyclic, without
    /// changing anything.
    ///
    /// # Errors
    /// [`Error::GraphCycle`] naming the cycle the edge would close, starting
    /// and ending at `from` (`[from, from]` for a self-loop).
    pub(crate) fn check_acyclic(&self, from: PageId, to: PageId) -> Result<()> {
        if from == to {
            return Err(Error::GraphCycle { cycle: vec![from, from] });
        }
        let (Some(a), Some(b)) = (self.node(from), self.node(to)) else {
            return Ok(()); // a page with no node has no edges: no path back
        };
        if self.dag.is_valid_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize)) {
            return Ok(());
        }
        Err(Error::GraphCycle { cycle: self.cycle_through(a, b) })
    }

    /// The cycle `a → b ⇝ a` (a path from `b` to `a` exists), as page ids.
    fn cycle_through(&self, a: u32, b: u32) -> Vec<PageId> {
        let mut prev: HashMap<u32, u32> = HashMap::new();
        let mut queue = VecDeque::from([b]);
        prev.insert(b, b);
        while let Some(n) = queue.pop_front() {
            if n == a {
                break;
            }
            let s = &self.slots[n as usize];
            for &c in s.data_children.iter().chain(&s.control_children) {
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(c) {
                    e.insert(n);
                    queue.push_back(c);
                }
            }
        }
        // Walk back from a to b, then close the loop.
        let mut path = vec![self.slots[a as usize].page];
        let mut n = a;
        while n != b {
            match prev.get(&n) {
                Some(&p) => n = p,
                None => break, // unreachable for a valid DAG: the edge was refused
            }
            path.push(self.slots[n as usize].page);
        }
        // path = [a, x, …, b]; closing and reversing gives [a, b, …, x, a].
        path.push(self.slots[a as usize].page);
        path.reverse();
        path
    }

    /// Add the edge `from → to` of `kind`.
    ///
    /// # Errors
    /// [`Error::GraphCycle`]; [`Error::InvalidEdge`] when an edge between the
    /// two pages exists or a data edge feeds a page with no recompute
    /// function. The graph is unchanged on error.
    pub(crate) fn add_edge(&mut self, from: PageHandle, to: PageHandle, kind: EdgeKind) -> Result<()> {
        self.check_edge(from.0, to.0, kind)?;
        let a = self.ensure_node(from);
        let b = self.ensure_node(to);
        self.link(a, b, kind);
        if kind == EdgeKind::Data {
            self.slots[b as usize].args.push(a);
        }
        Ok(())
    }

    /// Validate an edge insertion without changing anything.
    ///
    /// # Errors
    /// As [`Graph::add_edge`].
    pub(crate) fn check_edge(&self, from: PageId, to: PageId, kind: EdgeKind) -> Result<()> {
        self.check_acyclic(from, to)?;
        if self.edge(from, to).is_some() {
            return Err(Error::InvalidEdge { from, to, reason: "an edge between these pages exists".into() });
        }
        if kind == EdgeKind::Data && self.node(to).is_none_or(|b| self.slots[b as usize].binding.is_none()) {
            return Err(Error::InvalidEdge {
                from,
                to,
                reason: "a data edge needs a derived child; declare it derived first".into(),
            });
        }
        Ok(())
    }

    /// Insert the petgraph edge and the adjacency (not the argument list).
    fn link(&mut self, a: u32, b: u32, kind: EdgeKind) {
        let res = self.dag.try_add_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize), kind);
        debug_assert!(res.is_ok(), "edge validated before insertion");
        match kind {
            EdgeKind::Data => self.slots[a as usize].data_children.push(b),
            EdgeKind::Control => {
                self.slots[a as usize].control_children.push(b);
                self.slots[b as usize].control_parents.push(a);
            }
        }
        let min = self.slots[a as usize].level + 1;
        self.raise(b, min);
    }

    /// Remove the petgraph edge and the adjacency (not the argument list).
    fn unlink(&mut self, a: u32, b: u32) -> Option<EdgeKind> {
        let e = self.dag.inner().find_edge(NodeIndex::new(a as usize), NodeIndex::new(b as usize))?;
        let kind = self.dag.remove_edge(e)?;
        match kind {
            EdgeKind::Data => self.slots[a as usize].data_children.retain(|&c| c != b),
            EdgeKind::Control => {
                self.slots[a as usize].control_children.retain(|&c| c != b);
                self.slots[b as usize].control_parents.retain(|&p| p != a);
            }
        }
        Some(kind)
    }

    /// Raise `start` to at least level `min`, and its descendants below it.
    fn raise(&mut self, start: u32, min: u32) {
        if self.slots[start as usize].level >= min {
            return;
        }
        let mut stack = vec![(start, min)];
        while let Some((n, l)) = stack.pop() {
            if self.slots[n as usize].level >= l {
                continue;
            }
            self.slots[n as usize].level = l;
            let s = &self.slots[n as usize];
            for &c in s.data_children.iter().chain(&s.control_children) {
                if self.slots[c as usize].level <= l {
                    stack.push((c, l + 1));
                }
            }
        }
    }

    /// Remove the edge `from → to` and return its kind. A data parent is
    /// dropped from the child's argument list (every occurrence).
    ///
    /// # Errors
    /// [`Error::InvalidEdge`] when there is no such edge.
    pub(crate) fn remove_edge(&mut self, from: PageId, to: PageId) -> Result<EdgeKind> {
        let missing = || Error::InvalidEdge { from, to, reason: "no edge between these pages".into() };
        let (a, b) = (self.node(from).ok_or_else(missing)?, self.node(to).ok_or_else(missing)?);
        let kind = self.unlink(a, b).ok_or_else(missing)?;
        if kind == EdgeKind::Data {
            self.slots[b as usize].args.retain(|&p| p != a);
        }
        Ok(kind)
    }

    /// Validate a derivation without changing anything.
    ///
    /// # Errors
    /// [`Error::GraphCycle`] when a parent is the page itself or depends on it.
    pub(crate) fn check_declare(&self, page: PageId, parents: &[PageId]) -> Result<()> {
        for &p in parents {
            self.check_acyclic(p, page)?;
        }
        Ok(())
    }

    /// Make `page` derived by `binding` from `parents` (in call order),
    /// replacing any earlier derivation. Control edges from a parent become
    /// data edges. The page is queued for recomputation.
    ///
    /// # Errors
    /// As [`Graph::check_declare`]; the graph is unchanged on error.
    pub(crate) fn declare(
        &mut self,
        page: PageHandle,
        binding: Binding,
        parents: Vec<PageHandle>,
    ) -> Result<()> {
        let ids: Vec<PageId> = parents.iter().map(|p| p.0).collect();
        self.check_declare(page.0, &ids)?;
        let c = self.ensure_node(page);
        let old = std::mem::take(&mut self.slots[c as usize].args);
        for p in old {
            self.unlink(p, c);
        }
        let mut args = Vec::with_capacity(parents.len());
        for handle in parents {
            let p = self.ensure_node(handle);
            match self.edge_kind(p, c) {
                Some(EdgeKind::Data) => {}
                Some(EdgeKind::Control) => {
                    self.unlink(p, c);
                    self.link(p, c, EdgeKind::Data);
                }
                None => self.link(p, c, EdgeKind::Data),
            }
            args.push(p);
        }
        let s = &mut self.slots[c as usize];
        s.args = args;
        s.binding = Some(binding);
        self.force(c);
        Ok(())
    }

    /// Queue a derived node for recomputation and mark it stale.
    pub(crate) fn force(&mut self, n: u32) {
        let s = &mut self.slots[n as usize];
        s.stale = true;
        if !s.forced {
            s.forced = true;
            self.forced.push(n);
        }
    }

    /// Remove a page's node and all its edges. Derived children lose the
    /// page from their arguments and are queued for recomputation from
    /// the parents they keep (and marked stale until then).
    pub(crate) fn remove_page(&mut self, page: PageId) {
        let Some(n) = self.index.remove(&page) else { return };
        let s = std::mem::take(&mut self.slots[n as usize]);
        for &c in &s.data_children {
            self.slots[c as usize].args.retain(|&p| p != n);
            self.force(c);
        }
        for &c in &s.control_children {
            self.slots[c as usize].control_parents.retain(|&p| p != n);
        }
        let mut seen = Vec::new();
        for &p in &s.args {
            if !seen.contains(&p) {
                seen.push(p);
                self.slots[p as usize].data_children.retain(|&c| c != n);
            }
        }
        for &p in &s.control_parents {
            self.slots[p as usize].control_children.retain(|&c| c != n);
        }
        self.dag.remove_node(NodeIndex::new(n as usize));
        self.pending.retain(|&x| x != n);
        self.forced.retain(|&x| x != n);
    }

    /// Record that a delta was applied to `page`: the page is fresh again,
    /// its control children become stale and, unless the delta came from
    /// propagation, its data children are due.
    #[inline]
    pub(crate) fn on_apply(&mut self, page: PageId, propagated: bool) {
        if let Some(n) = self.node(page) {
            self.on_apply_node(n, propagated);
        }
    }

    /// [`Graph::on_apply`] for the page of live node `n`.
    #[inline]
    pub(crate) fn on_apply_node(&mut self, n: u32, propagated: bool) {
        let s = &mut self.slots[n as usize];
        s.stale = false;
        let due = !propagated && !s.data_children.is_empty() && !s.pending;
        if due {
            s.pending = true;
        }
        let controls = std::mem::take(&mut s.control_children);
        for &c in &controls {
            self.slots[c as usize].stale = true;
        }
        self.slots[n as usize].control_children = controls;
        if due {
            self.pending.push(n);
        }
    }

    /// Whether node `n`'s bytes may be out of date: it is stale (a control
    /// parent changed, or it is queued for recomputation), or a page it
    /// depends on through data edges was written or is queued and the
    /// propagation that covers it has not run yet (deferred mode).
    pub(crate) fn out_of_date(&self, n: u32) -> bool {
        let s = &self.slots[n as usize];
        if s.stale || s.forced {
            return true;
        }
        if !self.has_pending() {
            return false;
        }
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![n];
        while let Some(x) = stack.pop() {
            for &p in &self.slots[x as usize].args {
                let ps = &self.slots[p as usize];
                if ps.pending || ps.forced {
                    return true;
                }
                if seen.insert(p) {
                    stack.push(p);
                }
            }
        }
        false
    }

    /// Mark `page` stale (as a control parent's write would), if it has a
    /// node.
    pub(crate) fn mark_stale(&mut self, page: PageId) {
        if let Some(n) = self.node(page) {
            self.slots[n as usize].stale = true;
        }
    }

    /// Pages stale through a control edge and not queued for
    /// recomputation, ascending.
    pub(crate) fn stale_pages(&self) -> Vec<PageId> {
        let mut v: Vec<PageId> = self
            .index
            .iter()
            .filter(|&(_, &n)| {
                let s = &self.slots[n as usize];
                s.stale && !s.forced
            })
            .map(|(&p, _)| p)
            .collect();
        v.sort_unstable();
        v
    }

    /// Forget the queued work (after a propagation that covered it).
    pub(crate) fn clear_pending(&mut self) {
        for n in self.pending.drain(..) {
            self.slots[n as usize].pending = false;
        }
        for n in self.forced.drain(..) {
            let s = &mut self.slots[n as usize];
            s.forced = false;
            s.stale = false;
        }
    }

    /// Every dense index of a live node bound to function `func`.
    pub(crate) fn bound_to(&self, func: u32) -> Vec<u32> {
        let mut v: Vec<u32> = self.index.values().copied().collect();
        v.sort_unstable();
        v.retain(|&n| self.slots[n as usize].binding.is_some_and(|b| b.func == func));
        v
    }

    /// All live dense indices, ascending.
    pub(crate) fn live_nodes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.index.values().copied().collect();
        v.sort_unstable();
        v
    }

    /// Nodes reachable from the queued work (inclusive).
    pub(crate) fn downstream_of_pending(&self) -> Vec<bool> {
        let mut seen = vec![false; self.slots.len()];
        let mut stack: Vec<u32> = self.forced.clone();
        for &n in &self.pending {
            stack.extend(&self.slots[n as usize].data_children);
        }
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n as usize], true) {
                continue;
            }
            stack.extend(&self.slots[n as usize].data_children);
        }
        seen
    }

    /// Check the invariants: adjacency matches petgraph, levels increase
    /// along edges, argument lists name data parents.
    ///
    /// # Errors
    /// [`Error::Invariant`] naming the first violation.
    pub(crate) fn verify(&self) -> Result<()> {
        use petgraph::visit::{EdgeRef, IntoEdgeReferences};
        let mut edges = 0usize;
        for e in self.dag.inner().edge_references() {
            let (a, b) = (e.source().index(), e.target().index());
            let (sa, sb) = (&self.slots[a], &self.slots[b]);
            if sa.level >= sb.level {
                return Err(Error::Invariant(format!(
                    "edge {} -> {} does not raise the level",
                    sa.page, sb.page
                )));
            }
            let ok = match e.weight() {
                EdgeKind::Data => sa.data_children.contains(&(b as u32)) && sb.args.contains(&(a as u32)),
                EdgeKind::Control => {
                    sa.control_children.contains(&(b as u32)) && sb.control_parents.contains(&(a as u32))
                }
            };
            if !ok {
                return Err(Error::Invariant(format!(
                    "edge {} -> {} missing from the node table",
                    sa.page, sb.page
                )));
            }
            edges += 1;
        }
        let listed: usize = self
            .index
            .values()
            .map(|&n| {
                let s = &self.slots[n as usize];
                s.data_children.len() + s.control_children.len()
            })
            .sum();
        if listed != edges {
            return Err(Error::Invariant(format!("node table lists {listed} edges, petgraph holds {edges}")));
        }
        for (&page, &n) in &self.index {
            if self.slots[n as usize].page != page || self.slots[n as usize].cell.is_none() {
                return Err(Error::Invariant(format!("graph slot {n} does not hold page {page}")));
            }
        }
        Ok(())
    }
}

impl Graph {
    /// The graph as data (function names come from `names`).
    pub(crate) fn export(&self, names: &dyn Fn(u32) -> String) -> GraphImage {
        let mut img = GraphImage::default();
        for n in self.live_nodes() {
            let s = &self.slots[n as usize];
            if let Some(b) = s.binding {
                img.derived.insert(
                    s.page,
                    DerivedImage {
                        function: names(b.func),
                        version: b.version,
                        parents: s.args.iter().map(|&a| self.slots[a as usize].page).collect(),
                    },
                );
            }
            for &c in &s.data_children {
                img.edges.insert((s.page, self.slots[c as usize].page), EdgeKind::Data);
            }
            for &c in &s.control_children {
                img.edges.insert((s.page, self.slots[c as usize].page), EdgeKind::Control);
            }
        }
        img
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::Storage;
    use crate::registry::Page;
    use crate::registry::Registry;
    use crate::types::page::Location;

    fn handles(n: u64) -> Vec<PageHandle> {
        let reg = Registry::default();
        let alloc = crate::alloc::PageAllocator::new(0);
        (1..=n)
            .map(|i| {
                let storage = Storage::Host(alloc.alloc(1).expect("alloc"));
                let page = Page {
                    id: PageId(i),
                    len: 1,
                    epoch: Default::default(),
                    location: Location::Cpu,
                    meta: Default::default(),
                    storage,
                    changed: Default::default(),
                };
                (PageId(i), reg.insert(page).expect("insert"), 1)
            })
            .collect()
    }

    #[test]
    fn levels_rise_along_edges_and_cycles_are_named() {
        let h = handles(4);
        let mut g = Graph::default();
        // Insert against the order the nodes were created in.
        g.add_edge(h[2].clone(), h[3].clone(), EdgeKind::Control).unwrap();
        g.add_edge(h[1].clone(), h[2].clone(), EdgeKind::Control).unwrap();
        g.add_edge(h[0].clone(), h[1].clone(), EdgeKind::Control).unwrap();
        g.verify().unwrap();
        let level = |p: u64| g.slots[g.node(PageId(p)).unwrap() as usize].level;
        assert!(level(1) < level(2) && level(2) < level(3) && level(3) < level(4));
        match g.check_acyclic(PageId(4), PageId(2)) {
            Err(Error::GraphCycle { cycle }) => assert_eq!(cycle, [4, 2, 3, 4].map(PageId)),
            other => panic!("{other:?}"),
        }
        g.remove_page(PageId(3));
        g.check_acyclic(PageId(4), PageId(2)).unwrap();
        g.verify().unwrap();
    }
}
