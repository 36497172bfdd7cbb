//! The surface the viewer's JavaScript calls (`wasm-bindgen`): a
//! [`Session`] behind a handle, answers as JSON text, errors as
//! JavaScript `Error`s carrying the engine's message.

use crate::Session;
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// The viewer's handle on a [`Session`].
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct Viewer {
    s: Session,
}

fn json<T: Serialize>(v: &T) -> Result<String, JsError> {
    serde_json::to_string(v).map_err(|e| JsError::new(&e.to_string()))
}

fn js<T>(r: crate::Result<T>) -> Result<T, JsError> {
    r.map_err(|e| JsError::new(&e))
}

#[wasm_bindgen]
impl Viewer {
    /// An empty viewer.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Viewer {
        Viewer::default()
    }

    /// Set a log file's whole contents.
    #[wasm_bindgen(js_name = setFile)]
    pub fn set_file(&mut self, name: &str, bytes: Vec<u8>) {
        self.s.set_file(name, bytes);
    }

    /// Append bytes fetched from `offset` of a log file.
    #[wasm_bindgen(js_name = appendFile)]
    pub fn append_file(&mut self, name: &str, offset: f64, bytes: &[u8]) -> Result<(), JsError> {
        js(self.s.append_file(name, offset as u64, bytes))
    }

    /// Forget a log file.
    #[wasm_bindgen(js_name = removeFile)]
    pub fn remove_file(&mut self, name: &str) {
        self.s.remove_file(name);
    }

    /// A log file's length held (-1 when not held).
    #[wasm_bindgen(js_name = fileLen)]
    pub fn file_len(&self, name: &str) -> f64 {
        self.s.file_len(name).map_or(-1.0, |l| l as f64)
    }

    /// The files held: JSON `[[name, length], ...]`.
    pub fn files(&self) -> Result<String, JsError> {
        json(&self.s.files())
    }

    /// The history's start and commit points: JSON [`crate::Timeline`].
    pub fn timeline(&mut self) -> Result<String, JsError> {
        json(js(self.s.timeline())?)
    }

    /// Replay to an LSN (negative: the end of the log): JSON [`crate::StateView`].
    #[wasm_bindgen(js_name = gotoLsn)]
    pub fn goto_lsn(&mut self, lsn: f64) -> Result<String, JsError> {
        let to = (lsn >= 0.0).then_some(lsn as u64);
        json(&js(self.s.goto_lsn(to))?)
    }

    /// Replay to a logical time: JSON [`crate::StateView`].
    #[wasm_bindgen(js_name = gotoTime)]
    pub fn goto_time(&mut self, t: f64) -> Result<String, JsError> {
        json(&js(self.s.goto_time(t as u64))?)
    }

    /// Replay to an LSN as the state to compare with.
    #[wasm_bindgen(js_name = compareLsn)]
    pub fn compare_lsn(&mut self, lsn: f64) -> Result<String, JsError> {
        json(&js(self.s.compare_lsn(lsn as u64))?)
    }

    /// Stop comparing.
    #[wasm_bindgen(js_name = clearCompare)]
    pub fn clear_compare(&mut self) {
        self.s.clear_compare();
    }

    /// Bytes of a page of the shown state.
    #[wasm_bindgen(js_name = pageBytes)]
    pub fn page_bytes(&self, id: f64, offset: f64, len: f64) -> Result<Vec<u8>, JsError> {
        js(self.s.page_bytes(id as u64, offset as usize, len as usize))
    }

    /// A page as typed records: JSON [`crate::layout::Typed`].
    pub fn typed(&self, id: f64) -> Result<String, JsError> {
        json(&js(self.s.typed(id as u64))?)
    }

    /// Differences from the compared state: JSON `[PageDiff]`.
    pub fn diff(&self) -> Result<String, JsError> {
        json(&js(self.s.diff())?)
    }

    /// A page's provenance: JSON `{rows, text, truncated}`.
    pub fn provenance(&self, id: f64) -> Result<String, JsError> {
        let c = js(self.s.provenance(id as u64))?;
        #[derive(Serialize)]
        struct Out {
            rows: Vec<crate::StepRow>,
            text: String,
            truncated: bool,
        }
        json(&Out { rows: crate::chain_rows(&c), text: c.to_string(), truncated: c.truncated })
    }
}
