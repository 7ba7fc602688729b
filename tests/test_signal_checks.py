"""Signals that cannot be physical are said so (issue 11): b = 0 below the diffusion-weighted signal in most of
the mask; complex-valued DWIs are mapped from their magnitude, with a warning."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_rverdict.data.dwi import Dwi, load_dwi
from napari_rverdict.data.phantom import make_phantom
from napari_rverdict.maps.voxels import implausible_fraction, prepare_voxels
from napari_rverdict.physics.protocol import Protocol


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((10, 10, 2), seed=3)


def test_implausible_fraction_is_zero_for_diffusion_and_one_for_swapped_volumes(phantom):
    vox = prepare_voxels(phantom.to_dwi(), mask=phantom.mask)
    assert implausible_fraction(vox.signals, vox.protocol) < 0.05  # noise can flip a few, diffusion never most
    prot = vox.protocol
    # the volumes in reverse order (b = 0 columns get diffusion-weighted signal): most voxels flagged
    reversed_order = vox.signals[:, ::-1]
    exact = np.mean(reversed_order[:, prot.is_b0].mean(1) < reversed_order[:, ~prot.is_b0].mean(1))
    assert implausible_fraction(reversed_order, prot) == pytest.approx(exact) and exact > 0.5
    only_b0 = Protocol(np.zeros(3), np.zeros(3), np.zeros(3), np.full(3, 80.0), np.full(3, 3000.0))
    assert implausible_fraction(np.ones((4, 3)), only_b0) == 0.0


def test_prepare_voxels_warns_when_most_b0_are_below_the_dw_signal(phantom):
    dwi = phantom.to_dwi()
    order = np.argsort(-dwi.protocol.b, kind="stable")  # DW volumes where the protocol says b = 0
    bad = Dwi.from_array(dwi.data[..., order], dwi.affine, dwi.protocol)
    with pytest.warns(UserWarning, match="b = 0 signal is below the diffusion-weighted signal"):
        prepare_voxels(bad, mask=phantom.mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_voxels(dwi, mask=phantom.mask)  # a physical DWI: no such warning


def test_complex_dwi_is_mapped_from_its_magnitude(phantom, tmp_path):
    dwi = phantom.to_dwi()
    phase = np.exp(1j * np.linspace(0, 3, dwi.data.size).reshape(dwi.data.shape))
    with pytest.warns(UserWarning, match="complex-valued"):
        in_memory = Dwi.from_array(dwi.data * phase, dwi.affine, dwi.protocol)
    np.testing.assert_allclose(in_memory.data, dwi.data, rtol=1e-5, atol=1e-5)
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image((dwi.data * phase).astype(np.complex64), dwi.affine), str(path))
    with pytest.warns(UserWarning, match="complex-valued"):
        from_file = load_dwi(path, protocol=dwi.protocol)
    np.testing.assert_allclose(from_file.volume(3), dwi.data[..., 3], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(from_file.data, dwi.data, rtol=1e-5, atol=1e-5)
