"""The one path of DICOM output, shared by every pipeline's report: SEG building blocks (`seg`), TID 1500
SR building blocks (`sr`), source attributes conformed before deriving (`sources`), and the validation gate
every object passes before it may be stored and sent (`gate.OutputWriter`). Built with highdicom only."""
