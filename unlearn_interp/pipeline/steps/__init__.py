"""The steps every pipeline shares, one module each: where the unlearned model comes from
(``unlearn``), the junk direction and subspace (``directions``), accuracy and gap recovered
(``accuracy``), the layer profile (``profile``) and generations side by side (``generations``)."""
