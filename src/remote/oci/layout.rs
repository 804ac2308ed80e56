//! What a registry manifest means on disk: which layers are files, and at which paths. Pure
//! (JSON in, file list out), so every layout is unit-tested without a registry.
//!
//! Layouts read, each from its own tools' source (ARCHITECTURE.md, "oci://"):
//! - CNCF ModelPack (`modctl build`, KitOps `--use-model-pack`, Docker Model Runner): one layer
//!   per file, its path in `org.cncf.model.filepath` (legacy `org.cnai.model.filepath`);
//! - ORAS artifacts (`oras push`): one layer per file, named by `org.opencontainers.image.title`,
//!   whatever its media type;
//! - Docker Model Runner's own media types, with the ModelPack path annotation.
//!
//! Packed layers (tar, tar+gzip, tar+zstd: ModelPack folders, ORAS folders, KitOps ModelKits,
//! modelcar images) are refused with the media types found, until unpacking lands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest kind this reader understands, for the `Accept` header.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The path annotations, in the order they are read.
const PATH_KEYS: [&str; 3] = [
    "org.cncf.model.filepath",
    "org.cnai.model.filepath",
    "org.opencontainers.image.title",
];

/// ORAS marks a layer that is a packed folder (`oras push dir/`).
const ORAS_UNPACK: &str = "io.deis.oras.content.unpack";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// Sorted, so that a manifest built twice from the same files is the same bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image manifest or an index, as the registry returned it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Document {
    /// Parses a manifest body; `content_type` is the reply's, used when the body names none.
    pub fn parse(body: &[u8], content_type: &str) -> Result<Self, String> {
        let mut d: Document = serde_json::from_slice(body)
            .map_err(|e| format!("the manifest is not valid JSON ({e})"))?;
        if d.media_type.is_none() && !content_type.is_empty() {
            d.media_type = Some(content_type.split(';').next().unwrap_or("").trim().into());
        }
        Ok(d)
    }

    pub fn is_index(&self) -> bool {
        match self.media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(_) => false,
            None => !self.manifests.is_empty() && self.layers.is_empty(),
        }
    }
}

/// The manifest of an index to load: the one for this machine's platform (linux and its
/// architecture, as Go spells it), or the only one. An index of artifacts carries no platform:
/// with one entry it is that entry.
pub fn pick_platform<'a>(index: &'a Document, arch: &str) -> Result<&'a Descriptor, String> {
    let manifests: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| !m.annotations.contains_key("vnd.docker.reference.type"))
        .collect();
    if let [only] = manifests.as_slice() {
        return Ok(only);
    }
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .copied()
        .ok_or_else(|| {
            let found: Vec<String> = manifests
                .iter()
                .map(|m| match &m.platform {
                    Some(p) => format!("{}/{}", p.os, p.architecture),
                    None => format!("{} (no platform)", m.digest),
                })
                .collect();
            format!(
                "the index has no manifest for linux/{arch} (it has: {}); pin the one to load \
                 with @sha256:…",
                found.join(", ")
            )
        })
}

/// This machine's architecture as OCI platforms name it (Go's GOARCH).
pub fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// One layer that is one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    pub path: String,
    pub digest: String,
    pub size: u64,
}

/// Every file of a manifest, in layer order; an error names what could not be laid out.
pub fn files(manifest: &Document) -> Result<Vec<LayerFile>, String> {
    if manifest.is_index() {
        return Err("an index, not a manifest, was given to lay out (a bug)".into());
    }
    let mut out = Vec::new();
    let mut packed = BTreeMap::new();
    let mut unnamed = BTreeMap::new();
    for layer in &manifest.layers {
        match layer_kind(layer) {
            Kind::File(path) => out.push(LayerFile {
                path,
                digest: layer.digest.clone(),
                size: layer.size,
            }),
            Kind::Packed => *packed.entry(layer.media_type.clone()).or_insert(0) += 1,
            Kind::Unnamed => *unnamed.entry(layer.media_type.clone()).or_insert(0) += 1,
        }
    }
    if !packed.is_empty() {
        return Err(format!(
            "{} packed as archives ({}): unpacking tar layers (ModelPack folders, ORAS \
             folders, KitOps ModelKits, modelcar images) is not supported yet; push the files \
             one per layer (modctl build --raw, oras push FILE…)",
            layer_count(&packed),
            listed(&packed)
        ));
    }
    if !unnamed.is_empty() {
        return Err(format!(
            "{} with no file name ({}): a layer needs an org.cncf.model.filepath or \
             org.opencontainers.image.title annotation to be a file; the config is {}",
            layer_count(&unnamed),
            listed(&unnamed),
            manifest
                .config
                .as_ref()
                .map_or("missing", |c| c.media_type.as_str())
        ));
    }
    if out.is_empty() {
        return Err("the manifest has no layers: nothing to load".into());
    }
    refuse_duplicates(&out)?;
    Ok(out)
}

enum Kind {
    File(String),
    Packed,
    Unnamed,
}

fn layer_kind(layer: &Descriptor) -> Kind {
    let path = PATH_KEYS
        .iter()
        .find_map(|k| layer.annotations.get(*k))
        .filter(|p| !p.is_empty());
    let oras_folder = layer
        .annotations
        .get(ORAS_UNPACK)
        .is_some_and(|v| v == "true");
    let by_path_key = PATH_KEYS[..2]
        .iter()
        .any(|k| layer.annotations.contains_key(*k));
    match path {
        // ModelPack and Docker Model Runner say "tar" in the media type when a layer is one.
        Some(_) if by_path_key && is_archive(&layer.media_type) => Kind::Packed,
        Some(_) if oras_folder => Kind::Packed,
        // ORAS labels plain files `…image.layer.v1.tar`: the title makes it a file.
        Some(p) => Kind::File(p.trim_start_matches("./").to_string()),
        None if is_archive(&layer.media_type) => Kind::Packed,
        None => Kind::Unnamed,
    }
}

/// Media types of tar layers, compressed or not (ModelPack `….tar+zstd`, OCI `…layer.v1.tar+gzip`,
/// Docker `…rootfs.diff.tar.gzip`, KitOps `…modelkit.model.v1.tar`, DMR `…dir.tar`).
fn is_archive(media_type: &str) -> bool {
    let t = media_type.split(';').next().unwrap_or("");
    t.ends_with(".tar") || t.contains(".tar+") || t.ends_with(".tar.gzip") || t.ends_with(".tar.gz")
}

fn refuse_duplicates(files: &[LayerFile]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for f in files {
        if !seen.insert(f.path.as_str()) {
            return Err(format!(
                "two layers name the same file {:?}: the artifact is ambiguous; rebuild it",
                f.path
            ));
        }
    }
    Ok(())
}

fn layer_count(m: &BTreeMap<String, usize>) -> String {
    let n: usize = m.values().sum();
    if n == 1 {
        "1 layer is".into()
    } else {
        format!("{n} layers are")
    }
}

fn listed(m: &BTreeMap<String, usize>) -> String {
    m.iter()
        .map(|(t, n)| {
            let t = if t.is_empty() { "no media type" } else { t };
            format!("{n} × {t}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: &str) -> Document {
        Document::parse(json.as_bytes(), "").unwrap()
    }

    fn layer(media: &str, digest: char, size: u64, ann: &[(&str, &str)]) -> String {
        let ann: Vec<String> = ann
            .iter()
            .map(|(k, v)| format!("\"{k}\": \"{v}\""))
            .collect();
        format!(
            r#"{{"mediaType": "{media}", "digest": "sha256:{}", "size": {size}, "annotations": {{{}}}}}"#,
            digest.to_string().repeat(64),
            ann.join(", ")
        )
    }

    fn manifest(layers: &[String]) -> Document {
        doc(&format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}",
                "artifactType": "application/vnd.cncf.model.manifest.v1+json",
                "config": {{"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": "sha256:{}", "size": 2}},
                "layers": [{}]}}"#,
            "c".repeat(64),
            layers.join(",")
        ))
    }

    #[test]
    fn modelpack_oras_and_legacy_layers_are_files_at_their_paths() {
        let m = manifest(&[
            layer(
                "application/vnd.cncf.model.weight.v1.raw",
                'a',
                10,
                &[("org.cncf.model.filepath", "model-00001.safetensors")],
            ),
            layer(
                "application/vnd.cnai.model.weight.config.v1.raw",
                'b',
                3,
                &[("org.cnai.model.filepath", "sub/config.json")],
            ),
            // oras push labels plain files as tar layers: the title makes it a file.
            layer(
                "application/vnd.oci.image.layer.v1.tar",
                'd',
                4,
                &[("org.opencontainers.image.title", "./README.md")],
            ),
            layer(
                "application/vnd.docker.ai.safetensors",
                'e',
                5,
                &[("org.cncf.model.filepath", "x.safetensors")],
            ),
        ]);
        let f = files(&m).unwrap();
        let paths: Vec<&str> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "model-00001.safetensors",
                "sub/config.json",
                "README.md",
                "x.safetensors"
            ]
        );
        assert_eq!(f[0].digest, format!("sha256:{}", "a".repeat(64)));
        assert_eq!(f[1].size, 3);
    }

    #[test]
    fn packed_and_unnamed_layers_are_refused_with_their_media_types() {
        let m = manifest(&[
            layer(
                "application/vnd.cncf.model.weight.v1.raw",
                'a',
                10,
                &[("org.cncf.model.filepath", "w")],
            ),
            layer(
                "application/vnd.cncf.model.doc.v1.tar+zstd",
                'b',
                3,
                &[("org.cncf.model.filepath", "docs")],
            ),
            layer("application/vnd.oci.image.layer.v1.tar+gzip", 'd', 4, &[]),
        ]);
        let e = files(&m).unwrap_err();
        assert!(e.contains("2 layers are packed"), "{e}");
        assert!(
            e.contains("1 × application/vnd.cncf.model.doc.v1.tar+zstd"),
            "{e}"
        );
        assert!(
            e.contains("1 × application/vnd.oci.image.layer.v1.tar+gzip"),
            "{e}"
        );
        let m = manifest(&[layer(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            'a',
            1,
            &[
                ("org.opencontainers.image.title", "dir"),
                (ORAS_UNPACK, "true"),
            ],
        )]);
        assert!(files(&m).unwrap_err().contains("1 layer is packed"));
        let m = manifest(&[layer("application/vnd.ollama.image.model", 'a', 1, &[])]);
        let e = files(&m).unwrap_err();
        assert!(
            e.contains("no file name (1 × application/vnd.ollama.image.model)"),
            "{e}"
        );
        assert!(
            e.contains("config is application/vnd.cncf.model.config.v1+json"),
            "{e}"
        );
    }

    #[test]
    fn two_layers_at_one_path_and_an_empty_manifest_are_refused() {
        let a = layer(
            "application/vnd.cncf.model.weight.v1.raw",
            'a',
            1,
            &[("org.cncf.model.filepath", "w")],
        );
        let b = layer(
            "application/vnd.cncf.model.weight.v1.raw",
            'b',
            1,
            &[("org.cncf.model.filepath", "./w")],
        );
        assert!(files(&manifest(&[a, b]))
            .unwrap_err()
            .contains("same file \"w\""));
        assert!(files(&manifest(&[])).unwrap_err().contains("no layers"));
    }

    #[test]
    fn an_index_resolves_to_this_platform_or_its_only_entry() {
        let entry = |digest: char, plat: &str| {
            format!(
                r#"{{"mediaType": "{OCI_MANIFEST}", "digest": "sha256:{}", "size": 1{plat}}}"#,
                digest.to_string().repeat(64)
            )
        };
        let idx = doc(&format!(
            r#"{{"mediaType": "{OCI_INDEX}", "manifests": [{}, {}, {}]}}"#,
            entry(
                'a',
                r#", "platform": {"os": "linux", "architecture": "arm64"}"#
            ),
            entry(
                'b',
                r#", "platform": {"os": "linux", "architecture": "amd64"}"#
            ),
            entry(
                'c',
                r#", "platform": {"os": "unknown", "architecture": "unknown"}, "annotations": {"vnd.docker.reference.type": "attestation-manifest"}"#
            ),
        ));
        assert!(idx.is_index());
        assert!(pick_platform(&idx, "amd64")
            .unwrap()
            .digest
            .contains("bbbb"));
        assert!(pick_platform(&idx, "arm64")
            .unwrap()
            .digest
            .contains("aaaa"));
        let e = pick_platform(&idx, "s390x").unwrap_err();
        assert!(
            e.contains("no manifest for linux/s390x (it has: linux/arm64, linux/amd64)"),
            "{e}"
        );
        let one = doc(&format!(r#"{{"manifests": [{}]}}"#, entry('d', "")));
        assert!(
            one.is_index(),
            "an index without mediaType is known by its manifests"
        );
        assert!(pick_platform(&one, "amd64")
            .unwrap()
            .digest
            .contains("dddd"));
        assert!(files(&one).is_err());
    }

    #[test]
    fn the_reply_content_type_stands_in_for_a_missing_media_type() {
        let d = Document::parse(
            br#"{"manifests": []}"#,
            "application/vnd.oci.image.index.v1+json; charset=utf-8",
        )
        .unwrap();
        assert!(d.is_index());
        assert!(Document::parse(b"{", "")
            .unwrap_err()
            .contains("not valid JSON"));
    }
}
