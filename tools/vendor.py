#!/usr/bin/env python3
"""Vendor the dashboard's front-end files and map shapes into the package.

The dashboard is served by Python and no JavaScript build step ever runs, so the few
browser libraries it uses are copied into ``src/affluent/web/static/vendor/`` and the
département outlines into ``src/affluent/web/static/geo/``. This script is the one way
to (re)make them; it uses the Python 3.11 standard library only.

    python tools/vendor.py          # npm step: pinned packages -> static/vendor/, VENDORED.md
    python tools/vendor.py geo      # geo step: départements GeoJSON -> static/geo/departements.json
    python tools/vendor.py all      # both

npm step: for each pinned package and version it asks the registry's metadata for the
integrity, runs ``npm pack`` into a temporary folder, checks the tarball's sha512 against
the pinned value (a mismatch stops everything before any file is touched), copies only
the listed files and the licence texts, and rewrites VENDORED.md. To move to a newer
version, change ``version`` and ``integrity`` below (``npm view <pkg>@<ver> dist.integrity``)
and run the script again.

geo step: reads the 101 départements (shared/data/france-departements, IGN/INSEE Admin
Express COG 2018, Licence Ouverte), simplifies them without opening gaps between
neighbours (shared borders are cut into arcs at the points where three outlines meet,
and each arc is simplified once with Douglas-Peucker, so both sides get the same line),
drops islets and holes too small to see, rounds coordinates to 4 decimals, checks the
result and writes one compact FeatureCollection with properties ``code`` and ``nom``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "affluent" / "web" / "static"
VENDOR = STATIC / "vendor"
GEO = STATIC / "geo"
REFRESH_NPM = "python tools/vendor.py"
REFRESH_GEO = "python tools/vendor.py geo"


# --------------------------------------------------------------------------- npm step


@dataclass(frozen=True)
class Package:
    name: str  # npm package name
    version: str  # exact version, pinned
    folder: str  # static/vendor/<folder>/
    license: str  # SPDX identifier
    integrity: str  # npm's dist.integrity (sha512, base64) of the tarball
    files: dict[str, str]  # path inside the package -> path under the folder
    optional: dict[str, str] = field(default_factory=dict)  # copied when present
    use: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_path(self) -> str:
        """The tarball's path on the npm registry (the registry's usual layout)."""
        base = self.name.rsplit("/", 1)[-1]
        return f"{self.name}/-/{base}-{self.version}.tgz"


# The files are flattened out of the packages' dist/ folders: the repository's
# .gitignore ignores every folder named dist/ (or build/), which would hide them.
# leaflet.css finds its pictures at images/*.png, relative to itself: kept so.
PACKAGES: tuple[Package, ...] = (
    Package(
        name="leaflet",
        version="1.9.4",
        folder="leaflet",
        license="BSD-2-Clause",
        integrity="sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA==",
        files={
            "dist/leaflet.js": "leaflet.js",
            "dist/leaflet.css": "leaflet.css",
            "dist/images/layers.png": "images/layers.png",
            "dist/images/layers-2x.png": "images/layers-2x.png",
            "dist/images/marker-icon.png": "images/marker-icon.png",
            "dist/images/marker-icon-2x.png": "images/marker-icon-2x.png",
            "dist/images/marker-shadow.png": "images/marker-shadow.png",
            "LICENSE": "LICENSE",
        },
        use="the live map",
    ),
    Package(
        name="uplot",
        version="1.6.32",
        folder="uplot",
        license="MIT",
        integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
        files={
            "dist/uPlot.iife.min.js": "uPlot.iife.min.js",
            "dist/uPlot.min.css": "uPlot.min.css",
            "LICENSE": "LICENSE",
        },
        use="the charts",
    ),
    Package(
        name="swagger-ui-dist",
        version="5.35.0",
        folder="swagger-ui",
        license="Apache-2.0",
        integrity="sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==",
        files={
            "swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "swagger-ui.css": "swagger-ui.css",
            "LICENSE": "LICENSE",
        },
        optional={
            "favicon-32x32.png": "favicon-32x32.png",
            "NOTICE": "NOTICE",
            # the licence notices of the third-party code inside the bundle, which
            # the bundle's first line points to
            "swagger-ui-bundle.js.LICENSE.txt": "swagger-ui-bundle.js.LICENSE.txt",
        },
        use="the OpenAPI page at /docs",
    ),
)


def run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit(f"error: {cmd[0]} not found: install it (npm comes with node)")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"error: {' '.join(cmd)} failed ({exc.returncode}):\n{exc.stderr.strip()}")
    return proc.stdout


def sri_sha512(data: bytes) -> str:
    """The npm registry's integrity string of a tarball's bytes."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Fetched:
    pkg: Package
    tarball: Path
    taken: dict[str, bytes]  # destination -> content


def fetch(pkg: Package, tmp: Path) -> Fetched:
    """npm pack the pinned version, check its integrity, and read the listed files."""
    meta = json.loads(run(["npm", "view", pkg.spec, "dist.integrity", "dist.tarball", "--json"]) or "{}")
    if meta.get("dist.integrity") != pkg.integrity:
        sys.exit(f"error: {pkg.spec}: the registry says {meta.get('dist.integrity')!r}, pinned {pkg.integrity!r}")
    if not str(meta.get("dist.tarball", "")).endswith("/" + pkg.tarball_path):
        sys.exit(f"error: {pkg.spec}: unexpected tarball location {meta.get('dist.tarball')!r}")

    out = json.loads(run(["npm", "pack", pkg.spec, "--json", "--pack-destination", str(tmp)], cwd=tmp))
    info = out[0] if isinstance(out, list) else out
    tarball = tmp / info["filename"]
    actual = sri_sha512(tarball.read_bytes())
    if actual != pkg.integrity or info.get("integrity") != pkg.integrity:
        sys.exit(f"error: {pkg.spec}: tarball integrity {actual} (npm said {info.get('integrity')}), pinned {pkg.integrity}")

    taken: dict[str, bytes] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        # read the wanted members by name: nothing else of the tarball reaches the disk
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile() and "/" in m.name}
        for src, dst in [*pkg.files.items(), *pkg.optional.items()]:
            member = members.get(src)
            if member is None:
                if src in pkg.files:
                    sys.exit(f"error: {pkg.spec} has no {src}")
                continue
            fh = tar.extractfile(member)
            assert fh is not None
            taken[dst] = fh.read()
    return Fetched(pkg, tarball, taken)


def install(fetched: Fetched) -> None:
    dest = VENDOR / fetched.pkg.folder
    if dest.exists():
        shutil.rmtree(dest)  # no stale file of an older version stays behind
    for rel, data in sorted(fetched.taken.items()):
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _size(n: int) -> str:
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n} B"


def write_vendored_md(done: list[Fetched]) -> Path:
    lines = [
        "# Vendored front-end files",
        "",
        "The dashboard is served by Python and works offline: no CDN, no JavaScript build step.",
        "These files are copied unchanged out of the npm packages below (only the files listed,",
        "moved out of the packages' `dist/` folders, which the repository's `.gitignore` would hide).",
        "Do not edit them by hand; change the pins in `tools/vendor.py` and run it again.",
        "",
        "Refresh (from the repository root, with node and npm installed):",
        "",
        "```sh",
        REFRESH_NPM,
        "```",
        "",
        "It runs `npm pack <name>@<version>` for each pinned version, stops unless the tarball's",
        "sha512 equals the pinned integrity, replaces each folder below and rewrites this file.",
        "The tarball column is the tarball's path on the public npm registry; the integrity is npm's",
        "`dist.integrity` for it (`npm view <name>@<version> dist.integrity`).",
        "",
        "| folder | package | version | licence (SPDX) | npm tarball | integrity (sha512) | used for |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in done:
        p = f.pkg
        lines.append(f"| `vendor/{p.folder}/` | `{p.name}` | {p.version} | {p.license} | `{p.tarball_path}` | `{p.integrity}` | {p.use} |")
    lines += ["", "## Files taken", ""]
    for f in done:
        p = f.pkg
        lines += [f"### `{p.folder}/` ← `{p.spec}`", "", "| file | from the package | size | sha256 |", "|---|---|---|---|"]
        sources = {dst: src for src, dst in [*p.files.items(), *p.optional.items()]}
        for rel in sorted(f.taken):
            path = VENDOR / p.folder / rel
            lines.append(f"| `{rel}` | `{sources[rel]}` | {_size(path.stat().st_size)} | `{_sha256(path)}` |")
        missing = sorted(src for src in p.optional if p.optional[src] not in f.taken)
        if missing:
            lines += ["", "Not in this version (optional): " + ", ".join(f"`{m}`" for m in missing)]
        lines.append("")
    lines += [
        "## Notes",
        "",
        "- `leaflet.js` ends with a `sourceMappingURL` comment for `leaflet.js.map`, which is not",
        "  vendored: browsers' developer tools report it missing, nothing else happens.",
        "- `leaflet.css` loads its pictures from `images/`, beside it.",
        "- Swagger UI: only the standalone layout (its preset is not vendored) shows the online",
        "  validator badge, which asks an outside server; `validatorUrl: null` in the",
        "  `SwaggerUIBundle` options rules it out in any layout.",
        "",
    ]
    out = VENDOR / "VENDORED.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def npm_step() -> None:
    with tempfile.TemporaryDirectory(prefix="affluent-vendor-") as tmpname:
        tmp = Path(tmpname)
        # every tarball is fetched and checked before any vendored file changes
        done = [fetch(pkg, tmp) for pkg in PACKAGES]
        for f in done:
            print(f"{f.pkg.spec}: integrity ok ({f.pkg.integrity[:22]}…)")
        VENDOR.mkdir(parents=True, exist_ok=True)
        for f in done:
            install(f)
    md = write_vendored_md(done)
    for f in done:
        for rel in sorted(f.taken):
            path = VENDOR / f.pkg.folder / rel
            if not path.is_file() or path.read_bytes() != f.taken[rel]:
                sys.exit(f"error: {path} was not written")
            print(f"  {path.relative_to(ROOT)}  {_size(path.stat().st_size)}")
    print(f"wrote {md.relative_to(ROOT)}")


# --------------------------------------------------------------------------- geo step

SOURCE = ROOT.parent / "shared" / "data" / "france-departements" / "departements-avec-outre-mer.geojson"
OVERSEAS = {"971": "Guadeloupe", "972": "Martinique", "973": "Guyane", "974": "La Réunion", "976": "Mayotte"}
TOLERANCE_M = 500.0  # Douglas-Peucker tolerance, metres on the ground
OVERSEAS_TOLERANCE_M = 150.0  # finer for the overseas ones, which the map draws enlarged as insets
MIN_AREA_KM2 = 0.25  # islets and holes smaller than this are dropped (a feature's largest polygon never is)
DECIMALS = 4  # ~11 m in latitude
EARTH_R = 6_371_008.8  # metres
M_PER_DEG = EARTH_R * math.pi / 180

Point = tuple[float, float]


def _rings_of(geometry: dict[str, Any]) -> list[list[list[Point]]]:
    """Polygons (each a list of rings, exterior first) as open rings of tuples, no repeated points."""
    polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    out = []
    for poly in polys:
        rings = []
        for ring in poly:
            pts: list[Point] = []
            for x, y, *_ in ring:
                p = (float(x), float(y))
                if not pts or pts[-1] != p:
                    pts.append(p)
            if len(pts) > 1 and pts[0] == pts[-1]:
                pts.pop()
            rings.append(pts)
        out.append(rings)
    return out


def _area_km2(ring: list[Point]) -> float:
    """Signed area (counter-clockwise positive) of an open ring, local equirectangular projection."""
    if len(ring) < 3:
        return 0.0
    k = math.cos(math.radians(sum(p[1] for p in ring) / len(ring)))
    s = 0.0
    for (x1, y1), (x2, y2) in zip(ring, ring[1:] + ring[:1], strict=True):
        s += (x1 * y2 - x2 * y1) * k
    return s / 2 * M_PER_DEG * M_PER_DEG / 1e6


class _Projected:
    """A polyline in local metres (equirectangular about its first point's latitude)."""

    def __init__(self, pts: list[Point]) -> None:
        kx = math.cos(math.radians(pts[0][1])) * M_PER_DEG
        self.xy = [(x * kx, y * M_PER_DEG) for x, y in pts]

    def farthest(self, i: int, j: int) -> tuple[int, float]:
        """The point strictly between i and j farthest from the chord i-j, and its squared distance."""
        xy = self.xy
        ax, ay = xy[i]
        bx, by = xy[j]
        dx, dy = bx - ax, by - ay
        seg2 = dx * dx + dy * dy
        best, best_d = -1, -1.0
        for k in range(i + 1, j):
            px, py = xy[k]
            t = 0.0 if seg2 == 0.0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / seg2))
            d = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2
            if d > best_d:
                best, best_d = k, d
        return best, best_d

    def douglas_peucker(self, tol_m: float) -> list[int]:
        """Indices kept by Douglas-Peucker; both ends always are."""
        n = len(self.xy)
        keep = {0, n - 1}
        stack = [(0, n - 1)]
        while stack:
            i, j = stack.pop()
            if j <= i + 1:
                continue
            k, d = self.farthest(i, j)
            if d > tol_m * tol_m:
                keep.add(k)
                stack += [(i, k), (k, j)]
        return sorted(keep)


Part = tuple[tuple[Point, ...], bool]  # (canonical points, True if used backwards)


class Simplifier:
    """Simplifies rings so that a border shared by two outlines is simplified once.

    A point is a junction where its neighbours differ from one outline to another (three
    départements meet, or a border reaches the coast). Rings are cut into arcs at their
    junctions; each arc, taken in a canonical direction, is simplified once, so both sides
    of a border get exactly the same points. Rings with no junction (islands, or an enclave
    and the hole it fills) are simplified whole, from a canonical start. Points are rounded
    as they are kept; where two simplified edges cross, each crossing edge gets back the
    original point farthest from it, until no edges cross.
    """

    def __init__(self, rings: list[list[Point]], tol_m: float) -> None:
        self.tol_m = tol_m
        neighbours: dict[Point, set[frozenset[Point]]] = defaultdict(set)
        for ring in rings:
            n = len(ring)
            for i, p in enumerate(ring):
                neighbours[p].add(frozenset((ring[i - 1], ring[(i + 1) % n])))
        self.junctions = {p for p, s in neighbours.items() if len(s) > 1}
        self.closed: dict[tuple[Point, ...], bool] = {}  # canonical part -> is a whole ring
        self.tol: dict[tuple[Point, ...], float] = {}  # canonical part -> tolerance (the finest asked)
        self.kept: dict[tuple[Point, ...], list[int]] = {}  # indices into _seq(part)
        self.proj: dict[tuple[Point, ...], _Projected] = {}

    def plan(self, ring: list[Point], tol_m: float | None = None) -> list[Part]:
        """The canonical parts a ring is made of, registered for simplification."""
        parts = self._parts(ring)
        for key, _ in parts:
            self.tol[key] = min(self.tol.get(key, math.inf), self.tol_m if tol_m is None else tol_m)
        return parts

    def _parts(self, ring: list[Point]) -> list[Part]:
        cuts = [i for i, p in enumerate(ring) if p in self.junctions]
        if not cuts:
            i0 = ring.index(min(ring))
            fwd = tuple(ring[i0:] + ring[:i0])
            bwd = (fwd[0], *reversed(fwd[1:]))
            key = min(fwd, bwd)
            self.closed[key] = True
            return [(key, key != fwd)]
        start = cuts[0]
        rot = ring[start:] + ring[:start] + [ring[start]]
        bounds = [i - start for i in cuts] + [len(ring)]
        parts: list[Part] = []
        for a, b in itertools.pairwise(bounds):
            fwd = tuple(rot[a : b + 1])
            bwd = fwd[::-1]
            key = min(fwd, bwd)
            self.closed.setdefault(key, False)
            parts.append((key, key != fwd))
        return parts

    def _seq(self, key: tuple[Point, ...]) -> list[Point]:
        return [*key, key[0]] if self.closed[key] else list(key)

    def _rounded(self, key: tuple[Point, ...]) -> list[tuple[int, Point]]:
        """Kept (index, rounded point) pairs, repeats dropped; a whole ring ends with its start."""
        seq = self._seq(key)
        out: list[tuple[int, Point]] = []
        for i in self.kept[key]:
            q = (round(seq[i][0], DECIMALS), round(seq[i][1], DECIMALS))
            if not out or out[-1][1] != q:
                out.append((i, q))
        if len(out) == 1:
            out.append((len(seq) - 1, out[0][1]))  # an arc keeps both ends
        return out

    def run(self, max_rounds: int = 20) -> int:
        """Simplify every registered part, then put back points where edges cross.

        Returns how many crossing edge pairs are left."""
        for key, closed in self.closed.items():
            proj = self.proj[key] = _Projected(self._seq(key))
            kept = proj.douglas_peucker(self.tol[key])
            while closed and len(kept) < 4 and len(kept) < len(key) + 1:  # a whole ring stays a polygon
                spans = [(kept[n + 1] - kept[n], n) for n in range(len(kept) - 1)]
                _, n = max(spans)
                kept.insert(n + 1, proj.farthest(kept[n], kept[n + 1])[0])
            self.kept[key] = kept
        crossings: list[tuple[int, int]] = []
        for _ in range(max_rounds):
            edges = []
            for key in self.closed:
                pts = self._rounded(key)
                edges += [(a[1], b[1], (key, a[0], b[0])) for a, b in itertools.pairwise(pts)]
            crossings = _crossings(edges)
            if not crossings:
                return 0
            refine = {edges[i][2] for pair in crossings for i in pair}
            for key, ia, ib in refine:
                if ib > ia + 1:
                    k, _ = self.proj[key].farthest(ia, ib)
                    self.kept[key] = sorted({*self.kept[key], k})
        return len(crossings)

    def ring(self, parts: list[Part]) -> list[Point]:
        """A simplified open ring from its parts (after run())."""
        out: list[Point] = []
        for key, back in parts:
            pts = [q for _, q in self._rounded(key)]
            if back:
                pts.reverse()
            out.extend(pts[:-1])
        return out


def _finish(ring: list[Point], ccw: bool) -> list[list[float]] | None:
    """Round, drop repeats, orient (RFC 7946: exteriors counter-clockwise), close; None if collapsed."""
    pts: list[Point] = []
    for x, y in ring:
        p = (round(x, DECIMALS), round(y, DECIMALS))
        if not pts or pts[-1] != p:
            pts.append(p)
    while len(pts) > 1 and pts[0] == pts[-1]:
        pts.pop()
    if len(set(pts)) < 3:
        return None
    area = _area_km2(pts)
    if area == 0.0:
        return None
    if (area > 0) != ccw:
        pts.reverse()
    pts.append(pts[0])
    return [[x, y] for x, y in pts]


def build_geo(source: Path, tol_m: float, min_area_km2: float, overseas_tol_m: float = OVERSEAS_TOLERANCE_M) -> dict[str, Any]:
    data = json.loads(source.read_text(encoding="utf-8"))
    feats = []
    for f in data["features"]:
        props = f["properties"]
        feats.append((str(props["code"]), str(props["nom"]), _rings_of(f["geometry"])))

    # drop islets and holes too small to see, but never a feature's largest polygon
    kept = []
    for code, nom, polys in feats:
        areas = [abs(_area_km2(poly[0])) for poly in polys]
        biggest = max(range(len(polys)), key=areas.__getitem__)
        out = []
        for i, poly in enumerate(polys):
            if i != biggest and areas[i] < min_area_km2:
                continue
            out.append([poly[0], *(h for h in poly[1:] if abs(_area_km2(h)) >= min_area_km2)])
        kept.append((code, nom, out))

    simplifier = Simplifier([r for _, _, polys in kept for poly in polys for r in poly], tol_m)
    tols = {code: overseas_tol_m if code in OVERSEAS else tol_m for code, _, _ in kept}
    plans = {code: [[simplifier.plan(r, tols[code]) for r in poly] for poly in polys] for code, _, polys in kept}
    left = simplifier.run()
    if left:
        print(f"  {left} crossing edge pairs left after simplification")
    features = []
    for code, nom, polys in sorted(kept, key=lambda t: t[0]):
        out_polys = []
        for plan in plans[code]:
            ext = _finish(simplifier.ring(plan[0]), ccw=True)
            if ext is None:
                continue
            holes = [h for h in (_finish(simplifier.ring(r), ccw=False) for r in plan[1:]) if h is not None]
            out_polys.append([ext, *holes])
        if not out_polys:  # the simplified shape collapsed: keep the largest ring as it was
            largest = max(polys, key=lambda poly: abs(_area_km2(poly[0])))
            ext = _finish(largest[0], ccw=True)
            assert ext is not None, code
            out_polys = [[ext]]
        geometry = {"type": "Polygon", "coordinates": out_polys[0]} if len(out_polys) == 1 else {"type": "MultiPolygon", "coordinates": out_polys}
        features.append({"type": "Feature", "properties": {"code": code, "nom": nom}, "geometry": geometry})
    return {"type": "FeatureCollection", "features": features}


def _segments_cross(p1: Point, p2: Point, p3: Point, p4: Point) -> bool:
    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    d1, d2 = orient(p3, p4, p1), orient(p3, p4, p2)
    d3, d4 = orient(p1, p2, p3), orient(p1, p2, p4)
    return ((d1 > 0) != (d2 > 0)) and ((d3 > 0) != (d4 > 0)) and 0 not in (d1, d2, d3, d4)


def _crossings(edges: Sequence[tuple[Point, Point, object]], cell: float = 0.1) -> list[tuple[int, int]]:
    """Pairs of edges that cross properly (touching or overlapping collinear edges do not count)."""
    grid: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (a, b, _) in enumerate(edges):
        for cx in range(math.floor(min(a[0], b[0]) / cell), math.floor(max(a[0], b[0]) / cell) + 1):
            for cy in range(math.floor(min(a[1], b[1]) / cell), math.floor(max(a[1], b[1]) / cell) + 1):
                grid[cx, cy].append(i)
    found: set[tuple[int, int]] = set()
    for members in grid.values():
        for n, i in enumerate(members):
            a, b, _ = edges[i]
            for j in members[n + 1 :]:
                c, d, _ = edges[j]
                if (i, j) not in found and _segments_cross(a, b, c, d):
                    found.add((i, j))
    return sorted(found)


def check_geo(fc: dict[str, Any], expected: set[str]) -> list[str]:
    """Problems that make the file unusable; prints the softer findings."""
    problems = []
    codes = [f["properties"]["code"] for f in fc["features"]]
    if len(codes) != 101:
        problems.append(f"{len(codes)} features, not 101")
    if len(set(codes)) != len(codes):
        problems.append("duplicate codes")
    if set(codes) != expected:
        problems.append(f"codes differ from the source: {sorted(set(codes) ^ expected)}")
    edges: list[tuple[Point, Point, object]] = []
    for f in fc["features"]:
        g = f["geometry"]
        polys = [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"]
        if not polys or not f["properties"].get("nom"):
            problems.append(f"{f['properties']['code']}: empty")
        for poly in polys:
            for ring in poly:
                if len(ring) < 4 or ring[0] != ring[-1]:
                    problems.append(f"{f['properties']['code']}: ring open or under 4 positions")
                if any(len(str(c).split(".")[-1]) > DECIMALS for p in ring for c in p):
                    problems.append(f"{f['properties']['code']}: coordinates not rounded")
                edges += [((p[0], p[1]), (q[0], q[1]), None) for p, q in itertools.pairwise(ring)]
    # any two edges, of one ring or of two outlines: a shared border is the same edges twice, which do not count
    print(f"  crossing edge pairs: {len(_crossings(edges))}")
    return problems


def geo_step(source: Path, tol_m: float, overseas_tol_m: float, min_area_km2: float) -> None:
    if not source.is_file():
        sys.exit(f"error: no {source} (pass --source)")
    fc = build_geo(source, tol_m, min_area_km2, overseas_tol_m)
    expected = {str(f["properties"]["code"]) for f in json.loads(source.read_text(encoding="utf-8"))["features"]}
    text = json.dumps(fc, ensure_ascii=False, separators=(",", ":")) + "\n"
    problems = check_geo(json.loads(text), expected)
    if problems:
        sys.exit("error: " + "; ".join(problems[:10]))
    GEO.mkdir(parents=True, exist_ok=True)
    out = GEO / "departements.json"
    out.write_text(text, encoding="utf-8")
    n_pos = sum(
        len(r)
        for f in fc["features"]
        for poly in ([f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon" else f["geometry"]["coordinates"])
        for r in poly
    )
    size = out.stat().st_size
    print(f"wrote {out.relative_to(ROOT)}: {len(fc['features'])} features, {n_pos:,} positions, {_size(size)}")
    write_attribution(tol_m, overseas_tol_m, min_area_km2, size, len(fc["features"]), _sha256(out))


def write_attribution(tol_m: float, overseas_tol_m: float, min_area_km2: float, size: int, n: int, sha256: str) -> None:
    overseas = "\n".join(f"| `{code}` | {nom} |" for code, nom in OVERSEAS.items())
    text = f"""# Map shapes: attribution and licence

`departements.json` is a GeoJSON FeatureCollection (WGS84, RFC 7946) of the {n} French
départements, each with properties `code` (INSEE code: `"01"` … `"95"`, `"2A"`, `"2B"`,
`"971"` … `"976"`) and `nom`.

**Attribution (to show with the map): « IGN, INSEE — Admin Express COG 2018 »**

- Source: INSEE codes and names (COG 2018), IGN Admin Express COG 2018 outlines, as published
  by the france-geojson project (gregoiredavid/france-geojson), file
  `departements-avec-outre-mer.geojson` (shared/data/france-departements/).
- Licence: Licence Ouverte / Open Licence (Etalab) — reuse, modification and redistribution are
  allowed, with attribution as above.
- Modified: outlines simplified for the web (see below); codes and names unchanged.

## Overseas départements

These lie far from metropolitan France; the map draws them as insets:

| code | nom |
|---|---|
{overseas}

## How it was made

`{REFRESH_GEO}` (Python standard library only). Borders shared by two départements
are cut into arcs where three outlines meet or a border reaches the coast, and each arc is
simplified once (Douglas-Peucker, tolerance {tol_m:g} m on the ground; {overseas_tol_m:g} m for the
overseas ones, drawn enlarged), so neighbours keep a common border with no gap or overlap.
Where two simplified edges crossed, original points were put back until none do. Islets and
holes under {min_area_km2:g} km² are dropped (never a département's largest polygon), coordinates
are rounded to {DECIMALS} decimals, exterior rings run counter-clockwise and holes clockwise.

Result: {n} features, {size:,} bytes, sha256 `{sha256}`.
"""
    out = GEO / "ATTRIBUTION.md"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", nargs="?", default="npm", choices=["npm", "geo", "all"], help="what to vendor (default: npm)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="départements GeoJSON (geo step)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_M, help="simplification tolerance, metres (geo step)")
    parser.add_argument("--overseas-tolerance", type=float, default=OVERSEAS_TOLERANCE_M, help="the same for the overseas départements (geo step)")
    parser.add_argument("--min-area", type=float, default=MIN_AREA_KM2, help="drop islets and holes under this many km² (geo step)")
    args = parser.parse_args(argv)
    if args.step in ("npm", "all"):
        npm_step()
    if args.step in ("geo", "all"):
        geo_step(args.source, args.tolerance, args.overseas_tolerance, args.min_area)


if __name__ == "__main__":
    main()
