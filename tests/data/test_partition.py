"""yolov2/data/partition.py: the rank/worker split of the padded sample sequence, and DataLoader's round-robin."""

from __future__ import annotations

from yolov2.data.partition import rank_length, round_robin_position, slot_range


def test_slot_ranges_tile_the_padded_sequence():
    for total in (0, 1, 5, 21, 100):
        for world in (1, 2, 3, 4):
            for workers in (1, 2, 3):
                covered = []
                for rank in range(world):
                    for worker in range(workers):
                        start, stop = slot_range(total, world, rank, workers, worker)
                        covered.extend(range(start, stop))
                assert covered == list(range(rank_length(total, world) * world))


def test_round_robin_position_matches_a_simulated_dataloader():
    for counts in ([3, 3], [3, 2], [2, 1, 1], [4, 4, 3, 3], [1, 0], [0, 0, 0], [1, 3], [0, 2], [2, 0, 2]):
        # simulate: cycle over workers, skipping exhausted ones
        order, produced = [], [0] * len(counts)
        while any(p < c for p, c in zip(produced, counts)):
            for w, c in enumerate(counts):
                if produced[w] < c:
                    order.append((w, produced[w]))
                    produced[w] += 1
        assert [round_robin_position(counts, w, t) for w, t in order] == list(range(len(order)))
