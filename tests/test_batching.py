"""Batching across users (issue: a class of 30 at once): requests that share a schedule run as one batch through the
one loop, and each user's picture is the one a lone run gives, within 1/255 (the oracle: the lone run itself)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sdviz.errors import SdvizError
from sdviz.pipeline import batching, vae
from sdviz.pipeline.batching import Batcher
from sdviz.pipeline.sampler import denoise_batch, generate, generate_batch, prepare
from sdviz.pipeline.settings import RunSettings
from sdviz.pipeline.trace import Trace

PROMPTS = ["a big red circle on the left", "a small blue square at the top", "a green triangle", ""]


def settings_for(i: int, **changes) -> RunSettings:
    base = RunSettings(prompt=PROMPTS[i % len(PROMPTS)], negative_prompt="yellow" if i % 3 == 2 else "", steps=5,
                       guidance_scale=[1.0, 2.5, 7.5, 4.0][i % 4], seed=10 + i, height=32, width=32)
    return dataclasses.replace(base, **changes)


def max_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def run_all(ticket) -> list:
    return list(ticket)


@pytest.mark.parametrize("scheduler", ["euler", "euler_a", "dpmpp_2m", "ddim", "pndm"])
def test_a_batch_gives_each_request_its_lone_picture(tiny_model, scheduler):
    """Different prompts, negative prompts, seeds and guidance scales (with and without CFG) in one batch."""
    requests = [settings_for(i, scheduler=scheduler) for i in range(4)]
    *steps, traces = list(denoise_batch(tiny_model, [prepare(tiny_model, s) for s in requests]))
    assert len(steps) == len(generate(tiny_model, requests[0]).steps) and len(traces) == 4
    for settings, trace in zip(requests, traces, strict=True):
        alone = generate(tiny_model, settings)
        assert trace.settings == settings and trace.guidance == alone.guidance
        assert max_difference(trace.image, alone.image) <= 1
        assert [r.noise_uncond is None for r in trace.steps] == [r.noise_uncond is None for r in alone.steps]
        assert trace.unet_passes == alone.unet_passes


def test_image_to_image_requests_batch_too(tiny_model):
    rng = np.random.default_rng(1)
    pictures = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    requests = [settings_for(i, strength=0.6, scheduler="ddim") for i in range(3)]
    traces = list(denoise_batch(tiny_model, [prepare(tiny_model, s, p) for s, p in zip(requests, pictures, strict=True)]))[-1]
    for settings, picture, trace in zip(requests, pictures, traces, strict=True):
        assert max_difference(trace.image, generate(tiny_model, settings, picture).image) <= 1


def test_requests_with_different_schedules_are_refused_as_one_batch(tiny_model):
    with pytest.raises(ValueError, match="share"):
        list(denoise_batch(tiny_model, [prepare(tiny_model, settings_for(0)),
                                        prepare(tiny_model, settings_for(1, steps=6))]))


def test_generate_batch_runs_many_requests_in_chunks_and_keeps_their_order(tiny_model):
    """The evaluation's path: chunks of the batch size, requests of another schedule in loops of their own."""
    requests = [settings_for(i) for i in range(4)] + [settings_for(4, steps=6)]
    traces = generate_batch(tiny_model, requests, batch_size=3)
    assert [t.settings for t in traces] == requests
    for settings, trace in zip(requests, traces, strict=True):
        assert max_difference(trace.image, generate(tiny_model, settings).image) <= 1


def batcher_for(model, **kwargs) -> Batcher:
    return Batcher(lambda name: model, lambda m: 8, **kwargs)


def in_threads(fn, n: int) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as err:  # noqa: BLE001 - the test looks at it
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_users_pressing_together_share_batches_and_get_their_own_pictures(tiny_model, monkeypatch):
    monkeypatch.setattr(batching, "GATHER_S", 0.05)
    b = batcher_for(tiny_model, gather_s=0.05)
    requests = [settings_for(i, scheduler="euler") for i in range(6)]
    results = in_threads(lambda i: run_all(b.submit("tiny", requests[i])), 6)
    assert sum(b.batches) - b.rejoined == 6 and max(b.batches) >= 3  # the later ones joined one batch
    for settings, items in zip(requests, results, strict=True):
        *steps, trace = items
        assert isinstance(trace, Trace) and [s.index for s in steps] == list(range(5))
        assert max_difference(trace.image, generate(tiny_model, settings).image) <= 1


def test_a_young_lone_run_starts_again_inside_the_batch_of_a_class_arriving_just_after_it(tiny_model, monkeypatch):
    monkeypatch.setattr(batching, "REJOIN_S", 30.0)  # "young" on any machine: the test sleeps and steps in between
    b = batcher_for(tiny_model, gather_s=0.05)
    first = settings_for(0, scheduler="euler", steps=8)
    ticket = b.submit("tiny", first)
    items = iter(ticket)
    step0 = next(items)  # the lone run has begun (step 1 of 8 computed, in this thread)
    others = [settings_for(i, scheduler="euler", steps=8) for i in (1, 2, 3)]
    results = {}

    def other(i):
        results[i] = run_all(b.submit("tiny", others[i]))

    threads = [threading.Thread(target=other, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # they are waiting
    rest = list(items)
    for t in threads:
        t.join(60)
    assert b.rejoined == 1 and 4 in b.batches  # the first run started again with the three others
    steps = [step0, *rest[:-1]]
    assert [s.index for s in steps] == list(range(8))  # every step handed out exactly once
    assert max_difference(rest[-1].image, generate(tiny_model, first).image) <= 1
    for i in range(3):
        assert max_difference(results[i][-1].image, generate(tiny_model, others[i]).image) <= 1


def test_a_lone_run_too_old_to_start_again_finishes_alone_first(tiny_model, monkeypatch):
    monkeypatch.setattr(batching, "REJOIN_S", 0.0)
    b = batcher_for(tiny_model, gather_s=0.05)
    items = iter(b.submit("tiny", settings_for(0, scheduler="euler", steps=8)))
    next(items)
    other = threading.Thread(target=lambda: run_all(b.submit("tiny", settings_for(1, scheduler="euler", steps=8))))
    other.start()
    time.sleep(0.2)
    rest = list(items)
    other.join(60)
    assert b.rejoined == 0 and len(rest) == 8 and list(b.batches) == [1, 1]


def test_a_class_batch_decodes_its_first_step_for_everyone_at_once(tiny_model):
    b = batcher_for(tiny_model, gather_s=0.2, first_decodes=lambda model: True)
    requests = [settings_for(i, scheduler="euler") for i in range(3)]

    def user(i):
        ticket = b.submit("tiny", requests[i])
        return ticket, run_all(ticket)

    results = in_threads(user, 3)
    assert max(b.batches) == 3
    for ticket, items in results:
        assert sorted(ticket.decoded) == [(0, "x0"), (0, "x_t")]  # the first step only
        first = items[0]
        for kind, latents in (("x_t", first.x_t), ("x0", first.pred_x0)):
            alone = vae.decode_to_pil(tiny_model, latents)  # what the user's page would decode by itself
            assert ticket.decoded[(0, kind)].size == alone.size
            assert max_difference(ticket.decoded[(0, kind)], alone) <= 1
    lone = b.submit("tiny", settings_for(0, seed=99))
    run_all(lone)
    assert lone.decoded == {}  # a lone run decodes its own steps, as without batching


def test_a_batch_of_decodes_goes_a_few_pictures_per_call_in_order(tiny_model, monkeypatch):
    latents = torch.randn(7, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = vae.decode_batch_to_pil(tiny_model, latents)  # the tiny model's 7 pictures fit one call
    calls = []
    real = tiny_model.vae.decode
    monkeypatch.setattr(tiny_model.vae, "decode", lambda z, **kw: calls.append(len(z)) or real(z, **kw))
    widest = max(tiny_model.vae.config.block_out_channels) * (4 * tiny_model.vae_scale_factor) ** 2 * 4
    monkeypatch.setattr(vae, "DECODE_CALL_BYTES", 3 * widest)
    parts = vae.decode_batch_to_pil(tiny_model, latents)
    assert calls == [3, 3, 1]
    assert len(parts) == 7 and all(max_difference(a, b) <= 1 for a, b in zip(parts, whole, strict=True))
    alone = [vae.decode_to_pil(tiny_model, z) for z in latents]
    assert all(max_difference(a, b) <= 1 for a, b in zip(parts, alone, strict=True))


def test_after_its_first_step_a_class_batch_waits_for_every_user_to_show_it(tiny_model, monkeypatch):
    monkeypatch.setattr(batching, "FIRST_FRAMES_WAIT_S", 5.0)
    b = batcher_for(tiny_model, gather_s=0.2)
    slow, quick = (b.submit("tiny", settings_for(i, scheduler="euler", steps=6)) for i in (0, 1))
    seen: list = []
    reader = threading.Thread(target=lambda: seen.extend(quick))
    slow_items = iter(slow)
    reader.start()
    first = next(slow_items)  # the slow user's page is drawing its first step ...
    time.sleep(0.5)
    assert first.index == 0 and len(seen) == 1  # ... and the batch waits for it: the quick user has step 1 only
    rest = list(slow_items)
    reader.join(60)
    assert isinstance(rest[-1], Trace) and isinstance(seen[-1], Trace) and len(seen) == 7


def test_a_lone_request_starts_at_once_and_runs_alone(tiny_model):
    b = batcher_for(tiny_model, gather_s=5.0)  # a gathering window would show as seconds
    started = time.perf_counter()
    trace = run_all(b.submit("tiny", settings_for(1)))[-1]
    assert time.perf_counter() - started < 4.0
    assert list(b.batches) == [1]
    assert max_difference(trace.image, generate(tiny_model, settings_for(1)).image) == 0  # alone: the same loop


def test_a_stop_inside_a_batch_stops_only_that_user(tiny_model):
    b = batcher_for(tiny_model, gather_s=0.2)
    requests = [settings_for(i, scheduler="euler", steps=8) for i in range(3)]

    def user(i):
        ticket = b.submit("tiny", requests[i])
        seen = []
        for item in ticket:
            seen.append(item)
            if i == 1 and len(seen) == 2:
                ticket.stop()  # the Stop button
        return seen

    results = in_threads(user, 3)
    assert len(results[1]) == 2 and not isinstance(results[1][-1], Trace)
    for i in (0, 2):
        assert isinstance(results[i][-1], Trace) and len(results[i]) == 9
        assert max_difference(results[i][-1].image, generate(tiny_model, requests[i]).image) <= 1


def test_when_everyone_stops_the_loop_ends_and_the_next_batch_runs(tiny_model):
    b = batcher_for(tiny_model)
    ticket = b.submit("tiny", settings_for(0, steps=30))
    first = next(iter(ticket))
    ticket.stop()
    assert first.index == 0
    trace = run_all(b.submit("tiny", settings_for(1)))[-1]  # not stuck behind the abandoned batch
    assert isinstance(trace, Trace)


def test_a_failing_request_in_a_batch_fails_only_itself(tiny_model):
    b = batcher_for(tiny_model, gather_s=0.2)
    good = [settings_for(0, scheduler="euler"), settings_for(1, scheduler="euler")]
    bad = settings_for(2, scheduler="euler", text_layer=999)  # refused in words when prepared

    def user(i):
        return run_all(b.submit("tiny", good[i] if i < 2 else bad))

    results = in_threads(user, 3)
    assert isinstance(results[2], SdvizError) and "layers 1 to" in str(results[2])
    for i in (0, 1):
        assert isinstance(results[i][-1], Trace)
    broken_picture = b.submit("tiny", settings_for(0), init_image="/no/such/picture.png")
    with pytest.raises(SdvizError, match="init image"):
        run_all(broken_picture)


def test_identical_requests_share_one_row_and_repeats_come_from_the_cache(tiny_model):
    b = batcher_for(tiny_model, gather_s=0.2)
    same = settings_for(2, scheduler="euler")
    results = in_threads(lambda i: run_all(b.submit("tiny", same)), 5)
    assert sum(b.batches) - b.rejoined <= 2  # five presses of one example: one or two rows computed, not five
    images = [r[-1].image for r in results]
    assert all(max_difference(images[0], im) == 0 for im in images)
    batches_before = list(b.batches)
    again = run_all(b.submit("tiny", same))
    assert list(b.batches) == batches_before  # served from the cache: no new loop
    assert max_difference(again[-1].image, images[0]) == 0 and len(again) == 6


def test_the_cache_is_bounded_in_bytes(tiny_model):
    one = generate(tiny_model, settings_for(0))
    size = sum(r.nbytes() for r in one.steps) + one.width * one.height * 3
    b = Batcher(lambda name: tiny_model, lambda m: 8, cache_mb=2.5 * size / 2**20)  # room for two runs
    for i in range(6):
        run_all(b.submit("tiny", settings_for(i, seed=100 + i)))
    assert b._cache_bytes <= 2.5 * size and len(b._cache) == 2


def test_a_lone_run_does_not_start_again_for_requests_it_cannot_share_a_loop_with(tiny_model):
    b = batcher_for(tiny_model, gather_s=0.05)
    first = settings_for(0, scheduler="euler", steps=8)
    items = iter(b.submit("tiny", first))
    next(items)
    results = {}

    def other(i):  # other steps or another scheduler: never in the first run's batch
        changes = [dict(steps=6), dict(scheduler="ddim"), dict(steps=9, scheduler="dpmpp_2m")][i]
        results[i] = run_all(b.submit("tiny", settings_for(i + 1, **changes)))

    threads = [threading.Thread(target=other, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    rest = list(items)
    for t in threads:
        t.join(60)
    assert b.rejoined == 0 and isinstance(rest[-1], Trace) and len(rest) == 8
    assert all(isinstance(results[i][-1], Trace) for i in range(3))


def test_after_a_class_batch_new_threads_start_on_the_processs_own_thread_count(tiny_model):
    """A batch of several users steps on every core, but torch starts a new thread on the latest count set: a thread
    started afterwards (a teaching tab's, a lone run's) must get the process's count, as the CLI uses."""
    import torch

    from sdviz.pipeline.models import use_cpu_threads

    own = use_cpu_threads(tiny_model)
    b = batcher_for(tiny_model, gather_s=0.2)
    in_threads(lambda i: run_all(b.submit("tiny", settings_for(i, scheduler="euler"))), 3)
    assert max(b.batches) == 3
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [own]
