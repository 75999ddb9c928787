"""Realistic synthetic shop logs in the landing layout, deterministic per seed.

The generative story, chosen so that the sequence models have something real to learn:

- Catalogue: items in 20-50 categories; category popularity and item popularity inside a category are
  both Zipf-like, so a few items draw most of the traffic. Each item has an "also viewed" partner in
  its category, which gives item-to-item transitions on top of the category signal.
- Users: 2-4 category interests each, with logits that take a random-walk step every day, and now and
  then a new interest replacing the weakest (interest drift, what DIEN models). Activity is log-normal:
  a few heavy users, many light ones.
- Days: each user-day has 0..n sessions (Poisson). A session is a burst of events seconds to minutes
  apart, focused on one interest (a few exploratory events elsewhere); consecutive items stay in the
  category and often follow the partner link. Sessions are separated by 45 minutes to hours, and all
  events fall between 07:00 and 24:00 UTC, so a 30-minute gap rule recovers the sessions exactly (DSIN).
- Behaviour: the first event of a session is a view; later events are cart / fav / buy of the item
  viewed last with shop-like rates (~88% view, ~6% cart, ~4% fav, ~1.5% buy).

Everything per event is vectorised with numpy; Python loops run per day only. One `numpy.random.Generator`
drives everything in a fixed order, so the same seed gives identical tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.landing import write_partition

BEHAVIORS = ("view", "cart", "fav", "buy")
BEHAVIOR_RATES = (0.06, 0.04, 0.015)  # cart, fav, buy among all events; view is the rest
DEVICES = ("ios", "android", "web")
CITIES = ("Berlin", "Hamburg", "Munich", "Cologne", "Frankfurt", "Stuttgart", "Leipzig", "Dresden",
          "Bremen", "Hanover")
OCCUPATIONS = ("engineer", "student", "teacher", "nurse", "sales", "artist", "manager", "retired",
               "lawyer", "technician")
CATEGORY_NAMES = (
    "smartphones", "laptops", "headphones", "cameras", "tablets", "smartwatches", "monitors", "keyboards",
    "sneakers", "jackets", "dresses", "jeans", "t-shirts", "handbags", "sunglasses", "watches",
    "cookware", "coffee", "tea", "snacks", "cereal", "wine", "beer", "chocolate",
    "skincare", "makeup", "fragrance", "haircare", "vitamins", "toothcare", "shaving", "nailcare",
    "novels", "comics", "cookbooks", "board-games", "puzzles", "lego", "dolls", "rc-cars",
    "yoga", "running", "cycling", "camping", "fishing", "gardening", "lighting", "furniture",
    "bedding", "pet-food",
)
BRAND_HEADS = ("Ka", "Lo", "Mi", "Ve", "Su", "Ta", "No", "Ri", "Pa", "Ze")
BRAND_MIDS = ("ra", "mo", "li", "nu", "ve")
BRAND_TAILS = ("x", "ta", "on", "ia", "ro", "ix", "ko", "el")

MEAN_SESSION_LEN = 4.0      # events per session (geometric)
MAX_SESSION_LEN = 30
MAX_SESSIONS = 8            # per user-day
EXPLORE = 0.08              # share of events (after the first) outside the session's focus category
FOLLOW = 0.3                # chance that the next item is the "also viewed" partner of the previous one
DRIFT = 0.5                 # std of the daily random-walk step of interest logits
SWITCH = 0.05               # daily chance that a user's weakest interest is replaced by a new one
INTRA_GAP_S = (5, 90, 20 * 60)            # min, exponential mean, max seconds between events of a session
SESSION_GAP_S = (45 * 60, 100 * 60, 6 * 3600)  # min, exponential mean, max seconds between sessions
DAY_OPEN_S = 7 * 3600       # nobody shops before 07:00 UTC: overnight gaps always exceed 30 minutes
DAY_S = 24 * 3600
MAX_INTERESTS = 4


@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote."""

    days: int
    users: int
    items: int
    events: int
    per_ds: dict[str, int]
    path: Path


@dataclass(frozen=True)
class Catalogue:
    """Items indexed 0..I-1 (item_id = index + 1) and what the day simulation samples from them."""

    category: np.ndarray       # [I] category index of each item
    cat_pop: np.ndarray        # [C] category popularity (sums to 1)
    by_category: np.ndarray    # [I] item indices sorted by category
    cdf: np.ndarray            # [I] category + cumulative popularity inside it, aligned with by_category
    partner: np.ndarray        # [I] "also viewed" partner of each item (same category)
    table: pa.Table            # items snapshot in landing columns


@dataclass
class Population:
    """Users indexed 0..U-1 (user_id = index + 1) and their evolving interests."""

    interests: np.ndarray      # [U, K] category index per interest slot
    logits: np.ndarray         # [U, K] interest logits, -inf for unused slots; drifts every day
    activity: np.ndarray       # [U] relative activity, mean 1
    device: np.ndarray         # [U] preferred device index
    city: np.ndarray           # [U] city index (changes on the snapshot-change day)
    table: pa.Table            # users snapshot of day 0


@dataclass(frozen=True)
class DayLog:
    """One simulated day: the landing tables of that ds and the true session of every behaviour row."""

    ds: str
    behaviors: pa.Table        # landing columns, sorted by ts then user_id
    session: np.ndarray        # [N] global session id of each row (not a landing column; for checks)
    category: np.ndarray       # [N] category index of each row's item
    users: pa.Table | None
    items: pa.Table | None


def synthesize(landing: Path, days: int, users: int, items: int, seed: int, start: date = date(2024, 1, 1),
               events_per_user_day: float = 6.0, fmt: str = "parquet") -> SynthSummary:
    """Write `days` days of demo logs starting at `start` into `landing`; returns what was written."""
    per_ds: dict[str, int] = {}
    for day in generate(days, users, items, seed, start, events_per_user_day):
        write_partition(landing, "behaviors", day.ds, day.behaviors, fmt)
        for entity, table in (("users", day.users), ("items", day.items)):
            if table is not None:
                write_partition(landing, entity, day.ds, table, fmt)
        per_ds[day.ds] = day.behaviors.num_rows
    return SynthSummary(days, users, items, sum(per_ds.values()), per_ds, Path(landing))


def generate(days: int, users: int, items: int, seed: int, start: date = date(2024, 1, 1),
             events_per_user_day: float = 6.0) -> Iterator[DayLog]:
    """Simulate day by day (memory stays one day); the same arguments always yield the same tables."""
    if days < 1 or users < 1 or items < 1:
        raise ValueError(f"days, users and items must be >= 1 (got {days}, {users}, {items})")
    rng = np.random.default_rng(seed)
    catalogue = make_catalogue(rng, items)
    population = make_population(rng, users, catalogue.cat_pop)
    change_day = days // 2 if days > 1 else -1
    next_session = 0
    for d in range(days):
        ds = start + timedelta(days=d)
        events = simulate_day(rng, catalogue, population, events_per_user_day)
        users_table = population.table if d == 0 else None
        if d == change_day:
            users_table = move_some_users(rng, population)
        yield DayLog(ds.isoformat(), _behaviors_table(ds, events), events["session"] + next_session,
                     events["category"], users_table, catalogue.table if d == 0 else None)
        next_session += int(events["n_sessions"][0])
        drift_interests(rng, population, catalogue.cat_pop)


# ------------------------------------------------------------------------------------------------
# Catalogue and users
# ------------------------------------------------------------------------------------------------

def _zipf(n: int, exponent: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """[n] Zipf-like weights 1 / rank^exponent summing to 1; over a random ranking when rng is given."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    w /= w.sum()
    return w[rng.permutation(n)] if rng is not None else w


def make_catalogue(rng: np.random.Generator, items: int) -> Catalogue:
    """Items with categories, popularity, partners, brands, prices and titles."""
    n_cat = min(len(CATEGORY_NAMES), max(20, items // 40), max(1, items // 3))
    cat_pop = _zipf(n_cat, 0.9, rng)
    # every category gets one item, the rest go preferentially to popular categories
    rest = rng.choice(n_cat, size=items - n_cat, p=np.sqrt(cat_pop) / np.sqrt(cat_pop).sum()) \
        if items > n_cat else np.empty(0, np.int64)
    category = rng.permutation(np.concatenate([np.arange(n_cat), rest]))
    item_pop = 1.0 / (_rank_in_group(category, rng) + 1.0) ** 1.1   # Zipf inside each category
    by_category = np.lexsort((-item_pop, category))
    cat_sorted = category[by_category]
    within = item_pop[by_category] / np.bincount(category, weights=item_pop)[cat_sorted]
    cum = np.cumsum(within)
    cum -= np.concatenate([[0.0], cum])[_group_starts(cat_sorted)][cat_sorted]   # restart per category
    cum[np.r_[np.flatnonzero(np.diff(cat_sorted)), items - 1]] = 1.0             # close each block exactly
    cdf = cat_sorted + np.minimum(cum, 1.0)
    partner = _partners(rng, category, by_category, cdf)
    table = _items_table(rng, category, n_cat)
    return Catalogue(category, cat_pop, by_category, cdf, partner, table)


def _rank_in_group(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n] a random rank 0..size-1 of each element inside its group."""
    order = np.lexsort((rng.random(len(group)), group))
    starts = _group_starts(group[order])
    ranks = np.empty(len(group), np.int64)
    ranks[order] = np.arange(len(group)) - starts[group[order]]
    return ranks


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """[G] first position of each group value 0..G-1 in a sorted array (groups are dense 0..G-1)."""
    return np.searchsorted(sorted_groups, np.arange(sorted_groups.max() + 1))


def sample_items(rng: np.random.Generator, cat: Catalogue, categories: np.ndarray) -> np.ndarray:
    """[N] item indices drawn by popularity inside the given categories [N]."""
    pos = np.searchsorted(cat.cdf, categories + rng.random(len(categories)), side="right")
    return cat.by_category[np.minimum(pos, len(cat.cdf) - 1)]


def _partners(rng: np.random.Generator, category: np.ndarray, by_category: np.ndarray,
              cdf: np.ndarray) -> np.ndarray:
    """[I] a popularity-biased other item of the same category (itself only in one-item categories)."""
    pos = np.minimum(np.searchsorted(cdf, category + rng.random(len(category)), side="right"), len(cdf) - 1)
    cat_sorted = category[by_category]
    starts = _group_starts(cat_sorted)
    sizes = np.bincount(cat_sorted, minlength=len(starts))
    rank_of = np.empty(len(category), np.int64)
    rank_of[by_category] = np.arange(len(category))
    clash = by_category[pos] == np.arange(len(category))
    # a draw of the item itself moves to the next item of its category (cyclic)
    c = category
    pos = np.where(clash, starts[c] + (rank_of - starts[c] + 1) % sizes[c], pos)
    return by_category[pos]


def _items_table(rng: np.random.Generator, category: np.ndarray, n_cat: int) -> pa.Table:
    """Items snapshot: category name, a brand of that category, a log-normal price, a title."""
    n = len(category)
    n_brands = rng.integers(3, 9, n_cat)
    brand_k = (rng.random(n) * n_brands[category]).astype(np.int64)
    brands = np.array([h + m + t for h in BRAND_HEADS for m in BRAND_MIDS for t in BRAND_TAILS])
    brand_idx = (category * 8 + brand_k) % len(brands)   # 8 brands per category slot: no sharing
    mu = rng.uniform(np.log(5.0), np.log(400.0), n_cat)
    price = np.round(np.exp(mu[category] + 0.35 * rng.standard_normal(n)), 2)
    names = pa.array(CATEGORY_NAMES[:n_cat])
    cat_arr = pc.take(names, pa.array(category))
    brand_arr = pa.array(brands[brand_idx])
    series = pc.take(pa.array(list("ABCDEFGHJK")), pa.array(rng.integers(0, 10, n)))
    model = pc.binary_join_element_wise(series, pc.cast(pa.array(np.arange(1, n + 1)), pa.string()), "-")
    title = pc.binary_join_element_wise(brand_arr, cat_arr, model, " ")
    return pa.table({"item_id": pa.array(np.arange(1, n + 1, dtype=np.int64)), "category": cat_arr,
                     "brand": brand_arr, "price": pa.array(price, pa.float64()), "title": title})


def make_population(rng: np.random.Generator, users: int, cat_pop: np.ndarray) -> Population:
    """Users with 2-4 popularity-biased interests, activity, a preferred device and a profile."""
    k = min(MAX_INTERESTS, len(cat_pop))
    # Gumbel top-k: k distinct categories per user, drawn proportionally to category popularity
    keys = np.log(cat_pop)[None, :] + rng.gumbel(size=(users, len(cat_pop)))
    interests = np.argsort(-keys, axis=1, kind="stable")[:, :k]
    n_interests = rng.integers(min(2, k), k + 1, users)
    logits = rng.normal(0.0, 0.7, (users, k))
    logits[np.arange(k)[None, :] >= n_interests[:, None]] = -np.inf
    activity = rng.lognormal(0.0, 0.6, users)
    activity /= activity.mean()
    device = rng.choice(len(DEVICES), users, p=[0.4, 0.4, 0.2])
    age = 18 + np.round(rng.beta(2.0, 3.5, users) * 52).astype(np.int32)
    gender = rng.integers(0, 2, users)
    city = rng.choice(len(CITIES), users, p=_zipf(len(CITIES), 0.8))
    occupation = rng.integers(0, len(OCCUPATIONS), users)
    table = _users_table(np.arange(users), age, gender, city, occupation)
    return Population(interests, logits, activity, device, city, table)


def _users_table(idx: np.ndarray, age: np.ndarray, gender: np.ndarray, city: np.ndarray,
                 occupation: np.ndarray) -> pa.Table:
    return pa.table({
        "user_id": pa.array(idx.astype(np.int64) + 1),
        "age": pa.array(age, pa.int32()),
        "gender": pc.take(pa.array(["M", "F"]), pa.array(gender)),
        "city": pc.take(pa.array(CITIES), pa.array(city)),
        "occupation": pc.take(pa.array(OCCUPATIONS), pa.array(occupation)),
    })


def move_some_users(rng: np.random.Generator, pop: Population) -> pa.Table:
    """~2% of users (at least one) move to another city; returns their changed snapshot rows."""
    users = len(pop.city)
    movers = np.sort(rng.choice(users, max(1, users // 50), replace=False))
    pop.city[movers] = (pop.city[movers] + rng.integers(1, len(CITIES), len(movers))) % len(CITIES)
    rows = pop.table.take(pa.array(movers))
    return rows.set_column(rows.schema.get_field_index("city"), "city",
                           pc.take(pa.array(CITIES), pa.array(pop.city[movers])))


def drift_interests(rng: np.random.Generator, pop: Population, cat_pop: np.ndarray) -> None:
    """One day of interest drift: a random-walk step of every logit (unused slots stay -inf), and for a
    few users a new interest (popularity-biased) replaces their weakest one at the strength of their
    strongest, the way a shopper's focus moves on to something new."""
    pop.logits += rng.normal(0.0, DRIFT, pop.logits.shape)
    users = len(pop.logits)
    switch = np.flatnonzero(rng.random(users) < SWITCH)
    new_cat = rng.choice(len(cat_pop), users, p=cat_pop)[switch]
    weakest = np.argmin(np.where(np.isfinite(pop.logits), pop.logits, np.inf), axis=1)[switch]
    pop.interests[switch, weakest] = new_cat
    pop.logits[switch, weakest] = pop.logits[switch].max(axis=1)


# ------------------------------------------------------------------------------------------------
# One day of sessions and events
# ------------------------------------------------------------------------------------------------

def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """[S] one column index per row of probs [S, K] (inverse CDF, vectorised)."""
    cum = np.cumsum(probs, axis=1)
    return np.minimum((rng.random(len(probs))[:, None] > cum).sum(axis=1), probs.shape[1] - 1)


def simulate_day(rng: np.random.Generator, cat: Catalogue, pop: Population,
                 events_per_user_day: float) -> dict[str, np.ndarray]:
    """Sessions and events of one day for every user; arrays indexed by event [N] unless named.

    Returns user, item, category, behavior (index into BEHAVIORS), device (index into DEVICES),
    offset (seconds since midnight UTC), session (day-local id) and n_sessions ([1]).
    """
    users = len(pop.activity)
    n_sess = np.minimum(rng.poisson(pop.activity * events_per_user_day / MEAN_SESSION_LEN), MAX_SESSIONS)
    sess_user = np.repeat(np.arange(users), n_sess)                                       # [S]
    length = np.minimum(rng.geometric(1.0 / MEAN_SESSION_LEN, len(sess_user)), MAX_SESSION_LEN)
    focus = pop.interests[sess_user, _sample_rows(rng, _softmax(pop.logits[sess_user]))]   # [S]
    device = np.where(rng.random(len(sess_user)) < 0.8, pop.device[sess_user],
                      rng.integers(0, len(DEVICES), len(sess_user)))
    ev_sess = np.repeat(np.arange(len(sess_user)), length)                                # [N]
    first = np.cumsum(length) - length                                                     # [S]
    pos = np.arange(len(ev_sess)) - first[ev_sess]
    item, behavior = _session_items(rng, cat, focus, ev_sess, pos)
    offset = _event_offsets(rng, users, n_sess, sess_user, length, ev_sess, pos)
    user = sess_user[ev_sess]
    # a rare over-full day loses the tail of its last session; rows come out in log order (ts, user)
    keep = np.flatnonzero(offset < DAY_S)
    order = keep[np.lexsort((user[keep], offset[keep]))]
    return {"user": user[order], "item": item[order], "category": cat.category[item][order],
            "behavior": behavior[order], "device": device[ev_sess][order], "offset": offset[order],
            "session": ev_sess[order], "n_sessions": np.array([len(sess_user)])}


def _session_items(rng: np.random.Generator, cat: Catalogue, focus: np.ndarray, ev_sess: np.ndarray,
                   pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N] items and behaviours: focused, popularity-biased, partner-linked items; carts, favs and buys
    act on the item viewed last in the session."""
    n = len(ev_sess)
    explore = (pos > 0) & (rng.random(n) < EXPLORE)
    ev_cat = np.where(explore, rng.choice(len(cat.cat_pop), n, p=cat.cat_pop), focus[ev_sess])
    base = sample_items(rng, cat, ev_cat)
    prev_base = np.roll(base, 1)
    follow = (pos > 0) & (ev_cat == np.roll(ev_cat, 1)) & (rng.random(n) < FOLLOW)
    item = np.where(follow, cat.partner[prev_base], base)
    # Non-view rates are raised on positions > 0 so that the overall mix matches BEHAVIOR_RATES
    # although every session opens with a view.
    scale = n / max(1, n - int((pos == 0).sum()))
    cuts = np.cumsum(np.array(BEHAVIOR_RATES) * scale)
    r = rng.random(n)
    behavior = np.where(pos > 0, np.searchsorted(cuts, r, side="right") + 1, 0)
    behavior[behavior > len(BEHAVIOR_RATES)] = 0   # r above all cuts: a view
    idx = np.arange(n)
    last_view = np.maximum.accumulate(np.where(behavior == 0, idx, 0))  # sessions open with a view
    item = np.where(behavior == 0, item, item[last_view])
    return item, behavior


def _event_offsets(rng: np.random.Generator, users: int, n_sess: np.ndarray, sess_user: np.ndarray,
                   length: np.ndarray, ev_sess: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """[N] seconds since midnight: bursts inside sessions, long gaps between them, 07:00-24:00 UTC."""
    lo, mean, hi = INTRA_GAP_S
    gap = np.clip(np.round(rng.exponential(mean, len(ev_sess))).astype(np.int64) + lo, lo, hi)
    gap[pos == 0] = 0
    cum = np.cumsum(gap)
    first = np.cumsum(length) - length
    intra = cum - cum[first][ev_sess]                                     # [N] seconds since session start
    duration = intra[first + length - 1] if len(first) else np.empty(0, np.int64)   # [S]
    lo, mean, hi = SESSION_GAP_S
    between = np.clip(np.round(rng.exponential(mean, len(sess_user))).astype(np.int64) + lo, lo, hi)
    step = duration + between                                             # session start -> next start
    excl = np.cumsum(step) - step
    user_first = np.cumsum(n_sess) - n_sess                               # [U] first session of each user
    rel = excl - excl[np.minimum(user_first, max(0, len(step) - 1))][sess_user] if len(step) else excl
    need = np.zeros(users, np.int64)
    np.maximum.at(need, sess_user, rel + duration)                        # [U] span of the user's day
    slack = np.maximum(0, DAY_S - DAY_OPEN_S - 1 - need)
    day_start = DAY_OPEN_S + np.floor(rng.random(users) * slack).astype(np.int64)
    return (day_start[sess_user] + rel)[ev_sess] + intra


def _behaviors_table(ds: date, ev: dict[str, np.ndarray]) -> pa.Table:
    """Landing columns of one day's events (already in log order): ts as UTC `timestamp[us]`."""
    ts = _epoch_us(ds) + ev["offset"].astype(np.int64) * 1_000_000
    return pa.table({
        "user_id": pa.array(ev["user"].astype(np.int64) + 1),
        "item_id": pa.array(ev["item"].astype(np.int64) + 1),
        "behavior": pc.take(pa.array(BEHAVIORS), pa.array(ev["behavior"])),
        "ts": pa.array(ts, pa.timestamp("us")),
        "value": pa.nulls(len(ts), pa.float64()),
        "device": pc.take(pa.array(DEVICES), pa.array(ev["device"])),
    })


def _epoch_us(ds: date) -> int:
    """Microseconds from 1970-01-01 to midnight UTC of ds."""
    return (ds - date(1970, 1, 1)).days * DAY_S * 1_000_000
