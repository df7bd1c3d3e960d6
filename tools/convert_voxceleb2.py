"""Convert VoxCeleb2's AAC (.m4a) files to 16 kHz mono wav with ffmpeg.

VoxCeleb2 ships ``dev/aac/<spk>/<video>/<utt>.m4a``, which libsndfile (and
so dampit's loaders) cannot read. This tool decodes every file once with
``ffmpeg -ac 1 -ar 16000`` into a mirror tree (by default the sibling
``wav`` folder: ``dev/aac`` -> ``dev/wav``, where
:func:`dampit.dataio.prepare_voxceleb.prepare_voxceleb` looks) or beside
the ``.m4a`` files (``--beside``).

- Parallel: ``--workers`` ffmpeg processes at once (a thread pool drives
  them; the decoding runs in the ffmpeg processes).
- Resumable: each file is written to ``<utt>.wav.part`` and renamed when
  complete, and outputs that already exist and read as 16 kHz mono audio
  are skipped, so an interrupted run is simply started again.
- Failures do not stop the run: they are listed at the end (and in
  ``convert_failures.txt`` in the output folder) and the exit status is 1.

Usage (the VoxCeleb2 root or its ``dev/aac`` folder)::

    python tools/convert_voxceleb2.py /data/voxceleb2 --workers 8
"""

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import soundfile as sf
from tqdm import tqdm

from dampit.dataio.prepare_folder import scan_audio_tree

SAMPLE_RATE = 16000
FAILURES = "convert_failures.txt"


class FFmpegNotFoundError(RuntimeError):
    """ffmpeg is needed but not installed (or not where it was said to be)."""


def find_ffmpeg(ffmpeg="ffmpeg"):
    """Return the path of the ffmpeg executable or raise a clear error.

    Arguments
    ---------
    ffmpeg : str
        Name or path of the executable.

    Returns
    -------
    str
        Its full path.

    Raises
    ------
    FFmpegNotFoundError
        When it cannot be found.
    """
    path = shutil.which(ffmpeg)
    if path is None:
        raise FFmpegNotFoundError(
            f"ffmpeg not found (looked for {ffmpeg!r} on PATH): install it "
            "(e.g. `apt-get install ffmpeg` or `conda install ffmpeg`) or "
            "pass --ffmpeg /path/to/ffmpeg"
        )
    return path


def is_valid_wav(path, sample_rate=SAMPLE_RATE):
    """Whether ``path`` is a readable, non-empty mono wav at ``sample_rate``.

    Arguments
    ---------
    path : str
        The file.
    sample_rate : int
        The rate it must have.

    Returns
    -------
    bool
        True for a usable converted file.
    """
    try:
        info = sf.info(path)
    except Exception:  # missing, truncated header, not audio
        return False
    return (
        info.frames > 0
        and info.samplerate == sample_rate
        and info.channels == 1
    )


def default_output(src):
    """The mirror folder for ``src``: the sibling ``wav`` folder when
    ``src`` is named ``aac``, else ``<src>_wav``.

    Arguments
    ---------
    src : str
        Folder of ``.m4a`` files.

    Returns
    -------
    str
        Output folder.
    """
    src = os.path.abspath(src)
    if os.path.basename(src) == "aac":
        return os.path.join(os.path.dirname(src), "wav")
    return src + "_wav"


def resolve_source(src):
    """The folder of ``.m4a`` files for ``src``: ``src/dev/aac`` or
    ``src/aac`` when ``src`` is a VoxCeleb2 root holding one, else ``src``.

    Arguments
    ---------
    src : str
        A VoxCeleb2 root or a folder of ``.m4a`` files.

    Returns
    -------
    str
        Absolute path of the folder to convert.
    """
    src = os.path.abspath(src)
    if os.path.basename(src) != "aac":
        for sub in (("dev", "aac"), ("aac",)):
            if os.path.isdir(os.path.join(src, *sub)):
                return os.path.join(src, *sub)
    return src


def list_jobs(src, dst=None, overwrite=False, sample_rate=SAMPLE_RATE):
    """Pair every ``.m4a`` under ``src`` with its wav path, and split them
    into work to do and outputs that are already valid.

    Arguments
    ---------
    src : str
        Folder of ``.m4a`` files (searched recursively, hidden names
        skipped).
    dst : str or None
        Output root (None: beside the ``.m4a`` files).
    overwrite : bool
        Convert again even when a valid output exists.
    sample_rate : int
        Output rate.

    Returns
    -------
    todo : list of tuple
        ``(m4a, wav)`` pairs to convert.
    done : list of tuple
        Pairs whose output is already valid (a stale ``.part`` file beside
        one, left by a killed run, is removed).
    """
    todo, done = [], []
    for rel in scan_audio_tree(src, (".m4a",), min_depth=1):
        wav = os.path.splitext(rel)[0] + ".wav"
        m4a = os.path.join(src, *rel.split("/"))
        pair = (m4a, os.path.join(dst or src, *wav.split("/")))
        if not overwrite and is_valid_wav(pair[1], sample_rate):
            done.append(pair)
            _remove(pair[1] + ".part")  # left by a killed run
        else:
            todo.append(pair)
    return todo, done


def convert_one(m4a, wav, ffmpeg, sample_rate=SAMPLE_RATE):
    """Decode one file to ``wav`` through ``wav + '.part'``.

    Arguments
    ---------
    m4a : str
        Input file.
    wav : str
        Output file.
    ffmpeg : str
        ffmpeg executable.
    sample_rate : int
        Output rate.

    Returns
    -------
    str or None
        None on success, else the reason it failed.
    """
    os.makedirs(os.path.dirname(wav) or ".", exist_ok=True)
    part = wav + ".part"
    cmd = [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-i",
        m4a,
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(sample_rate),
        "-c:a",
        "pcm_s16le",
        "-f",
        "wav",
        part,
    ]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        return f"cannot run {ffmpeg}: {err}"
    if res.returncode != 0:
        _remove(part)
        tail = (res.stderr or "").strip().splitlines()[-3:]
        return f"ffmpeg exit {res.returncode}: {' | '.join(tail)}"
    if not is_valid_wav(part, sample_rate):
        _remove(part)
        return "ffmpeg wrote no valid 16 kHz mono wav"
    os.replace(part, wav)
    return None


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def convert_voxceleb2(
    src,
    dst=None,
    beside=False,
    workers=None,
    ffmpeg="ffmpeg",
    overwrite=False,
    sample_rate=SAMPLE_RATE,
    progress=True,
):
    """Convert every ``.m4a`` under ``src`` to 16 kHz mono wav.

    Arguments
    ---------
    src : str
        Folder of ``.m4a`` files (``<vox2>/dev/aac``), or the VoxCeleb2
        root holding it (see :func:`resolve_source`).
    dst : str or None
        Output root (None: :func:`default_output`, unless ``beside``).
    beside : bool
        Write each wav next to its ``.m4a``.
    workers : int or None
        Parallel ffmpeg processes (None: the CPU count).
    ffmpeg : str
        ffmpeg name or path.
    overwrite : bool
        Convert files whose valid output already exists too.
    sample_rate : int
        Output rate.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    dict
        ``converted``, ``skipped`` (already valid), ``failed`` (list of
        ``(m4a, reason)``) and ``output`` (the output root).

    Raises
    ------
    FileNotFoundError
        When ``src`` is not a folder.
    FFmpegNotFoundError
        When files need converting and ffmpeg cannot be found.
    """
    if not os.path.isdir(src):
        raise FileNotFoundError(f"VoxCeleb2 m4a folder not found: {src}")
    src = resolve_source(src)
    if beside:
        dst = None
    elif dst is None:
        dst = default_output(src)
    todo, done = list_jobs(src, dst, overwrite, sample_rate)
    out_root = src if dst is None else os.path.abspath(dst)
    result = {
        "converted": 0,
        "skipped": len(done),
        "failed": [],
        "output": out_root,
    }
    if not todo:
        return result
    exe = find_ffmpeg(ffmpeg)
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        futures = pool.map(
            lambda pair: (pair, convert_one(*pair, exe, sample_rate)), todo
        )
        for (m4a, _), err in tqdm(
            futures, total=len(todo), desc="m4a -> wav", disable=not progress
        ):
            if err is None:
                result["converted"] += 1
            else:
                result["failed"].append((m4a, err))
    if result["failed"]:
        os.makedirs(out_root, exist_ok=True)
        with open(os.path.join(out_root, FAILURES), "w") as f:
            f.writelines(f"{m}\t{e}\n" for m, e in result["failed"])
    return result


def main(argv=None):
    """Command line; see the module docstring.

    Arguments
    ---------
    argv : list of str or None
        Arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when every file is converted, 1 when some failed, 2 when ffmpeg
        or the input folder is missing.
    """
    parser = argparse.ArgumentParser(
        description="Convert VoxCeleb2 .m4a files to 16 kHz mono wav "
        "(parallel, resumable).",
    )
    parser.add_argument(
        "src", help="VoxCeleb2 root, or a folder of .m4a files (<vox2>/dev/aac)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output root (default: sibling 'wav' folder of an 'aac' src)",
    )
    parser.add_argument(
        "--beside", action="store_true", help="write wavs next to the m4a"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ffmpeg", default="ffmpeg")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        res = convert_voxceleb2(
            args.src,
            dst=args.out,
            beside=args.beside,
            workers=args.workers,
            ffmpeg=args.ffmpeg,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except (FFmpegNotFoundError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"converted {res['converted']}, already done {res['skipped']}, "
        f"failed {len(res['failed'])}; output in {res['output']}"
    )
    if res["failed"]:
        for m4a, err in res["failed"][:20]:
            print(f"  {m4a}: {err}", file=sys.stderr)
        print(
            f"full list in {os.path.join(res['output'], FAILURES)}; run "
            "again to retry the failed files",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
