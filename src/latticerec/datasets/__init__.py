"""Offline dataset builders: Amazon 2014, RecBole import, text encoding, cold-start splits, download,
statistics, the scalable synthetic generator, and the ``latticerec data`` commands. They write the
MMRec layout that the reader core (:mod:`latticerec.data`) reads; training never imports them."""
