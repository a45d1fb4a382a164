//! Where things live in the bucket.
//!
//! ```text
//! <prefix>chunks/<first 2 hex>/<BLAKE3 hex>.zst        chunk (zstd frame), shared by every image
//! <prefix>images/<image>/versions/<version id>        signed manifest (written after its chunks)
//! <prefix>images/<image>/retired/<version id>         signed retirement
//! <prefix>sites/<site>/status                          a site's signed status
//! <prefix>sites/<site>/snapshot                        a primary's signed state snapshot (standby)
//! <prefix>standby/<primary>/...                       a primary's images and snapshot for its
//!                                                      standby, the same layout again
//! ```
//! A manifest is written only once every chunk it names is in the bucket,
//! so a site that sees a manifest can fetch the whole version.

use object_store::path::Path;

use crate::chunk::ChunkId;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Folder inside the bucket, `""` or ending in `/`.
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        let p = prefix.trim_matches('/');
        Layout {
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    fn path(&self, rest: &str) -> Path {
        Path::from(format!("{}{rest}", self.prefix))
    }

    pub fn chunk(&self, id: &ChunkId) -> Path {
        let h = id.to_hex();
        self.path(&format!("chunks/{}/{h}.zst", &h[..2]))
    }

    pub fn versions(&self, image: &str) -> Path {
        self.path(&format!("images/{image}/versions"))
    }

    pub fn manifest(&self, image: &str, version: &str) -> Path {
        self.path(&format!("images/{image}/versions/{version}"))
    }

    pub fn retired(&self, image: &str) -> Path {
        self.path(&format!("images/{image}/retired"))
    }

    pub fn retirement(&self, image: &str, version: &str) -> Path {
        self.path(&format!("images/{image}/retired/{version}"))
    }

    pub fn sites(&self) -> Path {
        self.path("sites")
    }

    pub fn status(&self, site: &str) -> Path {
        self.path(&format!("sites/{site}/status"))
    }

    pub fn snapshot(&self, site: &str) -> Path {
        self.path(&format!("sites/{site}/snapshot"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let id = ChunkId::of(b"");
        let l = Layout::new("/province/khoi/");
        assert_eq!(
            l.chunk(&id).as_ref(),
            "province/khoi/chunks/af/af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262.zst"
        );
        assert_eq!(
            l.manifest("win11", "0f3c").as_ref(),
            "province/khoi/images/win11/versions/0f3c"
        );
        assert_eq!(
            l.retirement("win11", "0f3c").as_ref(),
            "province/khoi/images/win11/retired/0f3c"
        );
        assert_eq!(
            l.status("phuong-1").as_ref(),
            "province/khoi/sites/phuong-1/status"
        );
        let bare = Layout::new("");
        assert_eq!(bare.versions("win11").as_ref(), "images/win11/versions");
    }
}
