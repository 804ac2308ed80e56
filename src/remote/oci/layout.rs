//! What a registry manifest means on disk: which layers are files, which are archives to
//! unpack, and at which paths. Pure (JSON in, file list out), so every layout is unit-tested
//! without a registry.
//!
//! Layouts read, each from its own tools' source (ARCHITECTURE.md, "oci://"):
//! - CNCF ModelPack (`modctl build`, KitOps `--use-model-pack`, Docker Model Runner): one layer
//!   per file, its path in `org.cncf.model.filepath` (legacy `org.cnai.model.filepath`); a
//!   `….tar`, `….tar+gzip` or `….tar+zstd` layer is a folder, unpacked at DEST's top;
//! - ORAS artifacts (`oras push`): one layer per file, named by `org.opencontainers.image.title`
//!   whatever its media type, unless `io.deis.oras.content.unpack` (oras) or the media type
//!   `…image.layer.v1.tar+gzip` (the ORAS Python client) marks a packed folder;
//! - KitOps ModelKits: tar layers unpacked at DEST's top, and the Kitfile (the config) beside
//!   them, as `kit unpack` leaves them;
//! - container images (KServe modelcars): every layer a tar, the files under `/models` landing
//!   at DEST's top, later layers winning, whiteouts honoured;
//! - Docker Model Runner's own media types, with the ModelPack path annotation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::remote::types::{Archive, Compression};

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

/// Config media types of runnable images (whose model is the files under `/models`).
const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
const KITOPS_CONFIG: &str = "application/vnd.kitops.modelkit.config.v1+json";
/// Where a modelcar image keeps its model (KServe's `_download_oci` keeps `models/`).
pub const IMAGE_ROOT: &str = "models";

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

/// One layer: a file at `path`, or (`archive`) a tar whose members land instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// For an archive: a name for messages only (`layer N`).
    pub path: String,
    pub digest: String,
    pub size: u64,
    pub archive: Option<Archive>,
}

/// Every layer of a manifest, in order; an error names what could not be laid out.
pub fn files(manifest: &Document) -> Result<Vec<LayerFile>, String> {
    if manifest.is_index() {
        return Err("an index, not a manifest, was given to lay out (a bug)".into());
    }
    let config_type = manifest
        .config
        .as_ref()
        .map_or("", |c| c.media_type.as_str());
    if IMAGE_CONFIGS.contains(&config_type) {
        return image_layers(manifest);
    }
    let mut out = Vec::new();
    let mut unnamed = BTreeMap::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        match layer_kind(layer) {
            Kind::File(path) => out.push(LayerFile {
                path,
                digest: layer.digest.clone(),
                size: layer.size,
                archive: None,
            }),
            Kind::Packed => out.push(archive_layer(i, layer, None)?),
            Kind::Unnamed => *unnamed.entry(layer.media_type.clone()).or_insert(0) += 1,
        }
    }
    if !unnamed.is_empty() {
        return Err(format!(
            "{} with no file name ({}): a layer needs an org.cncf.model.filepath or \
             org.opencontainers.image.title annotation to be a file; the config is {}",
            layer_count(&unnamed),
            listed(&unnamed),
            if config_type.is_empty() {
                "missing"
            } else {
                config_type
            }
        ));
    }
    if out.is_empty() {
        return Err("the manifest has no layers: nothing to load".into());
    }
    if config_type == KITOPS_CONFIG {
        if let Some(c) = &manifest.config {
            // `kit unpack` writes the Kitfile beside the layers; its JSON form is valid YAML.
            out.push(LayerFile {
                path: "Kitfile".into(),
                digest: c.digest.clone(),
                size: c.size,
                archive: None,
            });
        }
    }
    refuse_duplicates(&out)?;
    Ok(out)
}

/// A runnable image: every layer a tar (whatever else it holds, only `/models` lands).
fn image_layers(manifest: &Document) -> Result<Vec<LayerFile>, String> {
    if manifest.layers.is_empty() {
        return Err("the image has no layers: nothing to load".into());
    }
    manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| archive_layer(i, l, Some(IMAGE_ROOT.to_string())))
        .collect()
}

fn archive_layer(
    i: usize,
    layer: &Descriptor,
    image_root: Option<String>,
) -> Result<LayerFile, String> {
    let compression = compression(&layer.media_type).ok_or_else(|| {
        format!(
            "layer {} ({}) is an archive of media type {:?}, whose compression is not \
             read (tar, tar+gzip and tar+zstd are)",
            i + 1,
            layer.digest,
            layer.media_type
        )
    })?;
    Ok(LayerFile {
        path: format!("layer {} ({})", i + 1, layer.digest),
        digest: layer.digest.clone(),
        size: layer.size,
        archive: Some(Archive {
            compression,
            image_root,
        }),
    })
}

/// The compression an archive layer's media type names; None when it is no tar this reads.
fn compression(media_type: &str) -> Option<Compression> {
    let t = media_type.split(';').next().unwrap_or("").trim();
    let t = t.strip_suffix(".nondistributable").unwrap_or(t);
    if t.ends_with("+gzip") || t.ends_with(".tar.gzip") || t.ends_with(".tar.gz") {
        Some(Compression::Gzip)
    } else if t.ends_with("+zstd") {
        Some(Compression::Zstd)
    } else if t.ends_with(".tar") || t.ends_with(".tar.v1") {
        Some(Compression::None)
    } else {
        None
    }
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
    // oras marks a folder with its unpack annotation; the ORAS Python client only by the
    // media type it gives folders (and unpacks every such layer on pull).
    let oras_folder = layer
        .annotations
        .get(ORAS_UNPACK)
        .is_some_and(|v| v == "true")
        || layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip";
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
    for f in files.iter().filter(|f| f.archive.is_none()) {
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
    fn packed_layers_are_archives_and_unnamed_ones_are_refused() {
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
            layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                'd',
                4,
                &[
                    ("org.opencontainers.image.title", "dir"),
                    (ORAS_UNPACK, "true"),
                ],
            ),
            layer("application/vnd.kitops.modelkit.model.v1.tar", 'e', 5, &[]),
        ]);
        let f = files(&m).unwrap();
        let kinds: Vec<Option<Compression>> = f
            .iter()
            .map(|f| f.archive.as_ref().map(|a| a.compression))
            .collect();
        assert_eq!(
            kinds,
            [
                None,
                Some(Compression::Zstd),
                Some(Compression::Gzip),
                Some(Compression::None)
            ]
        );
        assert!(f
            .iter()
            .all(|f| f.archive.as_ref().is_none_or(|a| a.image_root.is_none())));
        assert_eq!(f[1].path, format!("layer 2 (sha256:{})", "b".repeat(64)));
        let m = manifest(&[layer(
            "application/vnd.oci.image.layer.v1.tar+bzip2",
            'a',
            1,
            &[],
        )]);
        assert!(files(&m).unwrap_err().contains("compression is not read"));
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
    fn an_image_is_its_layers_under_models_and_a_modelkit_brings_its_kitfile() {
        let image = doc(&format!(
            r#"{{"mediaType": "{DOCKER_MANIFEST}",
                "config": {{"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:{c}", "size": 7}},
                "layers": [{}, {}]}}"#,
            layer(
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                'a',
                1,
                &[]
            ),
            layer(
                "application/vnd.oci.image.layer.v1.tar+zstd",
                'b',
                2,
                &[("org.opencontainers.image.title", "x")]
            ),
            c = "c".repeat(64)
        ));
        let f = files(&image).unwrap();
        assert_eq!(f.len(), 2);
        for (l, c) in f.iter().zip([Compression::Gzip, Compression::Zstd]) {
            let a = l.archive.as_ref().unwrap();
            assert_eq!(
                (a.compression, a.image_root.as_deref()),
                (c, Some(IMAGE_ROOT))
            );
        }
        let kit = doc(&format!(
            r#"{{"mediaType": "{OCI_MANIFEST}",
                "config": {{"mediaType": "{KITOPS_CONFIG}", "digest": "sha256:{c}", "size": 9}},
                "layers": [{}]}}"#,
            layer(
                "application/vnd.kitops.modelkit.model.v1.tar+gzip",
                'a',
                1,
                &[]
            ),
            c = "c".repeat(64)
        ));
        let f = files(&kit).unwrap();
        assert_eq!(f[1].path, "Kitfile");
        assert_eq!((f[1].size, f[1].archive.is_none()), (9, true));
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
