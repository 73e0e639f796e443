"""The MPII manual-download directory: which files it holds, reading the annotations, streaming the images.

Accepted layouts of the manual directory (first match wins):

* annotations: ``mpii_human_pose_v1_u12_1.mat``, ``mpii_human_pose_v1_u12_2/mpii_human_pose_v1_u12_1.mat`` (the
  extracted zip) or ``mpii_human_pose_v1_u12_2.zip``;
* images: ``images/*.jpg`` (the extracted tarball) or ``mpii_human_pose_v1.tar.gz`` (streamed; every split reads
  it once, so extracting it first makes building faster).

Public API::

    find_manual_files(manual_dir) -> ManualFiles          # FileNotFoundError naming what is missing
    read_annotations(files) -> list[ImageAnnotation]
    iter_image_bytes(files, names) -> Iterator[tuple[str, bytes | None]]   # None: image file absent
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from data.mpii.release import ImageAnnotation, load_release

HOMEPAGE = ("https://www.mpi-inf.mpg.de/departments/computer-vision-and-machine-learning/software-and-datasets/"
            "mpii-human-pose-dataset")
MAT_NAME = "mpii_human_pose_v1_u12_1.mat"
ZIP_NAME = "mpii_human_pose_v1_u12_2.zip"
ZIP_DIR = "mpii_human_pose_v1_u12_2"
TAR_NAME = "mpii_human_pose_v1.tar.gz"
TAR_MD5 = "b6bc9c6869d3f035a5570b2e68ec84c4"
IMAGES_DIR = "images"

INSTRUCTIONS = f"""\
MPII Human Pose must be downloaded by hand from its "Download" page:
  {HOMEPAGE}
Place these in the manual directory:
  1. the annotations: {ZIP_NAME} ("Annotations"), or the {MAT_NAME} it contains
     (also accepted extracted as {ZIP_DIR}/{MAT_NAME});
  2. the images: {TAR_NAME} ("Images", ~12 GiB, md5 {TAR_MD5}), or its
     extracted {IMAGES_DIR}/ folder of 24984 JPEGs (faster to build from).
"""


@dataclasses.dataclass(frozen=True)
class ManualFiles:
    """Where the annotations and images were found.

    Attributes:
      annotations: the .mat file, or the zip holding it.
      images: the folder of JPEGs, or the tarball.
    """

    annotations: Path
    images: Path

    @property
    def images_in_tarball(self) -> bool:
        return self.images.is_file()


def find_manual_files(manual_dir: str | os.PathLike[str]) -> ManualFiles:
    """Locates the release files in the manual directory.

    Raises:
      FileNotFoundError: naming every missing file, where it comes from and where to put it.
    """
    root = Path(manual_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"MPII manual directory {root} does not exist.\n{INSTRUCTIONS}")
    annotations = next((p for p in (root / MAT_NAME, root / ZIP_DIR / MAT_NAME, root / ZIP_NAME) if p.is_file()),
                       None)
    images_dir = root / IMAGES_DIR
    if images_dir.is_dir() and any(images_dir.iterdir()):
        images: Path | None = images_dir
    elif (root / TAR_NAME).is_file():
        images = root / TAR_NAME
    else:
        images = None
    missing = []
    if annotations is None:
        missing.append(f"  missing annotations: none of {MAT_NAME}, {ZIP_DIR}/{MAT_NAME}, {ZIP_NAME}")
    if images is None:
        missing.append(f"  missing images: neither a non-empty {IMAGES_DIR}/ folder nor {TAR_NAME}")
    if missing:
        raise FileNotFoundError(
            f"MPII files missing from the manual directory {root}:\n" + "\n".join(missing) + "\n" + INSTRUCTIONS)
    return ManualFiles(annotations=annotations, images=images)  # type: ignore[arg-type]


def read_annotations(files: ManualFiles) -> list[ImageAnnotation]:
    """Parses the release .mat, reading it out of the zip when needed."""
    path = files.annotations
    if path.suffix != ".zip":
        return load_release(path)
    try:
        with zipfile.ZipFile(path) as zf:
            member = next((n for n in zf.namelist() if n.rsplit("/", 1)[-1] == MAT_NAME), None)
            if member is None:
                raise FileNotFoundError(f"{path} holds no {MAT_NAME}; is it {ZIP_NAME} from {HOMEPAGE}?")
            data = zf.read(member)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path} is not a readable zip ({e}); download {ZIP_NAME} again from {HOMEPAGE}") from e
    return load_release(io.BytesIO(data))


def iter_image_bytes(files: ManualFiles, names: Iterable[str]) -> Iterator[tuple[str, bytes | None]]:
    """Yields (name, JPEG bytes) for every requested image, and (name, None) for those not found.

    From a folder the names come in the order given; from the tarball, in the tarball's order, the missing
    ones last.
    """
    wanted = list(dict.fromkeys(names))
    if not files.images_in_tarball:
        for name in wanted:
            path = files.images / name
            yield name, (path.read_bytes() if path.is_file() else None)
        return
    todo = set(wanted)
    try:
        with tarfile.open(files.images, "r:gz") as tf:
            for member in tf:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 2 or parts[-2] != IMAGES_DIR or parts[-1] not in todo:
                    continue
                todo.discard(parts[-1])
                fobj = tf.extractfile(member)
                yield parts[-1], (fobj.read() if fobj is not None else None)
                if not todo:
                    break
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(
            f"could not read {files.images} ({type(e).__name__}: {e}); it may be truncated: check its md5 "
            f"({TAR_MD5}) or extract it to {IMAGES_DIR}/ in the manual directory") from e
    for name in wanted:
        if name in todo:
            yield name, None
